// The decoder layers of a CPU decode step in one call: the same kernels the nn modules call
// (add_rms_norm, quant_linear or torch's linear, rotary, index_copy_ into the cache, paged decode
// attention, silu_and_mul), in the same order on the same tensors, so the hidden states are
// bit-identical to the module path. What goes away is the Python between them: at batch 1 on
// SmolLM2-135M about a dozen module calls, dispatch checks and views per layer, ~2 ms of a ~13 ms
// step on our 2-core box.
//
// Serves: fp32 CPU models, tensor parallel size 1, float or int8/int4 (kv_quant.QuantKVCache) KV
// caches, pure decode steps. The weights are bound once (tensors shared with the modules, no
// copies); caches and per-step tensors arrive with each call.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu_ops.h"
#include "paged_attention_cpu.h"
#include "paged_attention_kvq_cpu.h"
#include "quant_linear.h"

namespace {

// One projection: a low-bit weight (qweight set) or a float one, with how its bias is added.
struct Linear {
  at::Tensor weight;                 // float weight, or undefined
  at::Tensor qweight, scales;        // low-bit weight, or undefined
  std::optional<at::Tensor> mins, bias;
  int64_t bits = 0, group = 0;
  bool bias_after = false;           // row-parallel layers add the bias after the matmul
  int64_t gemm_mode = lmserve::kGemmFloat32;
  std::optional<at::Tensor> split;   // split_weight's halves for kGemmBf16x3, if kept
  int64_t gemv_max_m = 0;

  at::Tensor operator()(const at::Tensor& x) const {
    const std::optional<at::Tensor> inner = bias_after ? std::nullopt : bias;
    at::Tensor y = qweight.defined()
        ? lmserve::quant_linear(x, qweight, scales, mins, inner, bits, group, gemv_max_m,
                                gemm_mode, split)
        : at::linear(x, weight, inner);
    return bias_after && bias ? y + *bias : y;
  }
};

// kv_quant.quantize + QuantKVCache.store, op for op: x [T, KV, D] float -> its slots of data
// (uint8 codes, int4 packed by halves) and sz (float16 scale and zero per row).
void store_quantized(const at::Tensor& x, const std::optional<at::Tensor>& rotation, int64_t bits,
                     const at::Tensor& data, const at::Tensor& sz, const at::Tensor& slots) {
  const int64_t qmax = (int64_t{1} << bits) - 1;
  at::Tensor xf = x.to(at::kFloat);
  if (rotation) xf = at::matmul(xf, rotation->to(xf.scalar_type()));
  xf = xf.to(at::kFloat);
  const at::Tensor lo = xf.amin(-1, true), hi = xf.amax(-1, true);
  const at::Tensor scale_zero = at::cat({(hi - lo) / qmax, lo}, -1).to(at::kHalf);
  const auto parts = scale_zero.to(at::kFloat).split(1, -1);
  const at::Tensor& scale = parts[0];
  const at::Tensor& zero = parts[1];
  at::Tensor q = at::round((xf - zero) / at::where(scale > 0, scale, at::Scalar(1.0)))
                     .clamp_(0, qmax)
                     .to(at::kByte);
  if (bits == 4) {
    const int64_t half = q.size(-1) / 2;
    q = at::bitwise_or(q.narrow(-1, 0, half), at::bitwise_left_shift(q.narrow(-1, half, half), 4));
  }
  data.view({-1, data.size(2), data.size(3)}).index_copy_(0, slots, q);
  sz.view({-1, sz.size(2), sz.size(3)}).index_copy_(0, slots, scale_zero);
}

struct Layer {
  at::Tensor input_norm, post_norm;
  Linear qkv, o, gate_up, down;
};

class DecodeStack {
 public:
  DecodeStack(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, double scale)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), scale_(scale) {}

  void add_layer(at::Tensor input_norm, at::Tensor post_norm) {
    layers_.push_back(Layer{std::move(input_norm), std::move(post_norm), {}, {}, {}, {}});
  }

  // name: qkv, o, gate_up or down of the last added layer. Either weight or qweight is given.
  void set_linear(const std::string& name, std::optional<at::Tensor> weight,
                  std::optional<at::Tensor> qweight, std::optional<at::Tensor> scales,
                  std::optional<at::Tensor> mins, int64_t bits, int64_t group,
                  std::optional<at::Tensor> bias, bool bias_after, int64_t gemm_mode,
                  std::optional<at::Tensor> split, int64_t gemv_max_m) {
    TORCH_CHECK_VALUE(!layers_.empty(), "DecodeStack.set_linear: add a layer first");
    TORCH_CHECK_VALUE(weight.has_value() != qweight.has_value(),
                      "DecodeStack.set_linear: give exactly one of weight and qweight");
    Layer& l = layers_.back();
    Linear* lin = name == "qkv" ? &l.qkv : name == "o" ? &l.o : name == "gate_up" ? &l.gate_up
                : name == "down" ? &l.down : nullptr;
    TORCH_CHECK_VALUE(lin != nullptr, "DecodeStack.set_linear: unknown projection ", name);
    lin->weight = weight.value_or(at::Tensor());
    lin->qweight = qweight.value_or(at::Tensor());
    lin->scales = scales.value_or(at::Tensor());
    lin->mins = std::move(mins);
    lin->bias = std::move(bias);
    lin->bits = bits;
    lin->group = group;
    lin->bias_after = bias_after;
    lin->gemm_mode = gemm_mode;
    lin->split = std::move(split);
    lin->gemv_max_m = gemv_max_m;
  }

  // hidden [T, hidden] (the embeddings), cos/sin [T, head_dim]; caches: per layer k, v (float),
  // or with kv_bits 8/4 k, v, k_sz, v_sz of a QuantKVCache whose rows are stored times `rotation`
  // (if given); slot_mapping [T] int64; block_tables [T, width] and context_lens [T] int64, one
  // decoding token per sequence. Returns (hidden, residual) after the last layer, before the
  // final norm.
  std::tuple<at::Tensor, at::Tensor> forward(at::Tensor hidden, const at::Tensor& cos,
                                             const at::Tensor& sin,
                                             const std::vector<at::Tensor>& caches,
                                             int64_t kv_bits,
                                             const std::optional<at::Tensor>& rotation,
                                             const at::Tensor& slot_mapping,
                                             const at::Tensor& block_tables,
                                             const at::Tensor& context_lens) const {
    const int64_t n = static_cast<int64_t>(layers_.size());
    const int64_t per_layer = kv_bits ? 4 : 2;
    TORCH_CHECK_VALUE(kv_bits == 0 || kv_bits == 4 || kv_bits == 8,
                      "DecodeStack.forward: kv_bits must be 0, 4 or 8, got ", kv_bits);
    TORCH_CHECK_VALUE(static_cast<int64_t>(caches.size()) == n * per_layer,
                      "DecodeStack.forward: expected ", n * per_layer, " cache tensors, got ",
                      caches.size());
    const int64_t T = hidden.size(0), D = head_dim_;
    const int64_t q_size = heads_ * D, kv_size = kv_heads_ * D;
    std::optional<at::Tensor> residual;
    for (int64_t i = 0; i < n; ++i) {
      const Layer& l = layers_[i];
      auto [normed, summed] = lmserve::ops::add_rms_norm(hidden, residual, l.input_norm, eps_);
      residual = summed;
      at::Tensor qkv = l.qkv(normed);
      lmserve::ops::rotary_inplace(qkv, heads_ + kv_heads_, D, cos, sin);
      const at::Tensor q = qkv.narrow(1, 0, q_size).view({T, heads_, D});
      const at::Tensor k = qkv.narrow(1, q_size, kv_size).view({T, kv_heads_, D});
      const at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({T, kv_heads_, D});
      const at::Tensor attn = kv_bits
          ? quant_attention(q, k, v, &caches[i * 4], kv_bits, rotation, slot_mapping, block_tables,
                            context_lens)
          : float_attention(q, k, v, caches[i * 2], caches[i * 2 + 1], slot_mapping, block_tables,
                            context_lens);
      hidden = l.o(attn.reshape({T, q_size}));
      std::tie(normed, summed) = lmserve::ops::add_rms_norm(hidden, residual, l.post_norm, eps_);
      residual = summed;
      hidden = l.down(lmserve::ops::silu_and_mul(l.gate_up(normed)));
    }
    return {hidden, residual.value_or(hidden)};
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  // store_kv_ref + cpu_paged_attention.paged_decode_attention
  at::Tensor float_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& slots,
                             const at::Tensor& block_tables, const at::Tensor& context_lens) const {
    kc.view({-1, kc.size(2), kc.size(3)}).index_copy_(0, slots, k.to(kc.scalar_type()));
    vc.view({-1, vc.size(2), vc.size(3)}).index_copy_(0, slots, v.to(vc.scalar_type()));
    return lmserve::paged_decode_attention(q, kc, vc, block_tables, context_lens, scale_,
                                           std::nullopt);
  }

  // QuantKVCache.store + cpu_paged_attention_quant.paged_decode_attention_quant: q goes into the
  // cache's rotated basis and the output comes back out of it. c: k, v, k_sz, v_sz.
  at::Tensor quant_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor* c, int64_t bits,
                             const std::optional<at::Tensor>& rotation, const at::Tensor& slots,
                             const at::Tensor& block_tables, const at::Tensor& context_lens) const {
    store_quantized(k, rotation, bits, c[0], c[2], slots);
    store_quantized(v, rotation, bits, c[1], c[3], slots);
    at::Tensor qf = q.to(at::kFloat);
    if (rotation) qf = at::matmul(qf, rotation->to(qf.scalar_type()));
    at::Tensor out = lmserve::paged_decode_attention_quant(qf.contiguous(), c[0], c[1], c[2], c[3],
                                                           bits, block_tables, context_lens, scale_);
    if (rotation) out = at::matmul(out, rotation->t().to(out.scalar_type()));
    return out.to(q.scalar_type());
  }

  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<DecodeStack>(m, "DecodeStack")
      .def(py::init<int64_t, int64_t, int64_t, double, double>(), py::arg("heads"),
           py::arg("kv_heads"), py::arg("head_dim"), py::arg("eps"), py::arg("scale"))
      .def("add_layer", &DecodeStack::add_layer, py::arg("input_norm"), py::arg("post_norm"))
      .def("set_linear", &DecodeStack::set_linear, py::arg("name"), py::arg("weight"),
           py::arg("qweight"), py::arg("scales"), py::arg("mins"), py::arg("bits"),
           py::arg("group"), py::arg("bias"), py::arg("bias_after"), py::arg("gemm_mode"),
           py::arg("split"), py::arg("gemv_max_m"))
      .def("forward", &DecodeStack::forward, py::arg("hidden"), py::arg("cos"), py::arg("sin"),
           py::arg("caches"), py::arg("kv_bits"), py::arg("rotation"), py::arg("slot_mapping"),
           py::arg("block_tables"), py::arg("context_lens"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &DecodeStack::num_layers);
}
