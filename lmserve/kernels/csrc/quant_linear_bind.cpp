// Python binding of the low-bit linear (quant_linear.cpp).
#include <torch/csrc/utils/pybind.h>

#include "quant_linear.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("quant_linear", &lmserve::quant_linear, py::arg("x"), py::arg("qweight"), py::arg("scales"),
        py::arg("mins"), py::arg("bias"), py::arg("bits"), py::arg("group_size"),
        py::arg("gemv_max_m"), py::arg("bf16_gemm") = false, py::call_guard<py::gil_scoped_release>());
  m.def("dequantize", &lmserve::dequantize, py::arg("qweight"), py::arg("scales"), py::arg("mins"),
        py::arg("bits"), py::arg("group_size"), py::call_guard<py::gil_scoped_release>());
}
