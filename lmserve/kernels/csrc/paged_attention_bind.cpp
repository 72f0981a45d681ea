// Python binding of the CPU paged decode attention (paged_attention_cpu.cpp).
#include <torch/csrc/utils/pybind.h>

#include "paged_attention_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("paged_decode_attention", &lmserve::paged_decode_attention, py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("block_tables"), py::arg("context_lens"), py::arg("scale"),
        py::arg("out") = py::none(), py::call_guard<py::gil_scoped_release>());
}
