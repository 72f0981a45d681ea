// Python binding of the fused element-wise ops (cpu_ops.cpp).
#include <torch/csrc/utils/pybind.h>

#include "cpu_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("add_rms_norm", &lmserve::ops::add_rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"),
        py::arg("eps"), py::call_guard<py::gil_scoped_release>());
  m.def("rotary_inplace", &lmserve::ops::rotary_inplace, py::arg("x"), py::arg("heads"), py::arg("head_dim"),
        py::arg("cos"), py::arg("sin"), py::call_guard<py::gil_scoped_release>());
  m.def("silu_and_mul", &lmserve::ops::silu_and_mul, py::arg("gate_up"),
        py::call_guard<py::gil_scoped_release>());
}
