// Python binding of the CPU paged decode attention over an int8/int4 cache.
#include <torch/csrc/utils/pybind.h>

#include "paged_attention_kvq_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("paged_decode_attention_quant", &lmserve::paged_decode_attention_quant, py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("k_sz"), py::arg("v_sz"), py::arg("bits"), py::arg("block_tables"),
        py::arg("context_lens"), py::arg("scale"), py::call_guard<py::gil_scoped_release>());
}
