// Python binding of the low-bit linear (quant_linear.cpp).
#include <torch/csrc/utils/pybind.h>

#include "quant_linear.h"
#include "split_bf16_gemm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("quant_linear", &lmserve::quant_linear, py::arg("x"), py::arg("qweight"), py::arg("scales"),
        py::arg("mins"), py::arg("bias"), py::arg("bits"), py::arg("group_size"),
        py::arg("gemv_max_m"), py::arg("gemm_mode") = lmserve::kGemmFloat32, py::arg("split") = std::nullopt, py::call_guard<py::gil_scoped_release>());
  m.def("dequantize", &lmserve::dequantize, py::arg("qweight"), py::arg("scales"), py::arg("mins"),
        py::arg("bits"), py::arg("group_size"), py::call_guard<py::gil_scoped_release>());
  m.def("split_bf16_available", &lmserve::split_bf16_available);
  m.def("split_weight",
        py::overload_cast<const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          int64_t, int64_t>(&lmserve::split_weight),
        py::arg("qweight"), py::arg("scales"), py::arg("mins"), py::arg("bits"),
        py::arg("group_size"), py::call_guard<py::gil_scoped_release>());
}
