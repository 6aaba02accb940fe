// Fused elementwise passes of the RWKV token mixers on the CPU (issue 10: CPU training speed), float32,
// tokens (N, T = H*W, C) contiguous. Plain C++ with a C ABI (called through ctypes), like wkv_cpu.cpp.
//
// The training step is memory-bound on a CPU: each elementwise op reads and writes whole (N, T, C) tensors.
// Autograd runs the token shift of Vision-RWKV as 5 slices, 4 pads and a cat, and its backward as one
// zero-filled full-size tensor per slice; every lerp(xx, x, mu) and its backward is another 2-4 passes. Here:
//
// * token_mix_{fwd,bwd}: the shift xx = q_shift(x) and K mixes lerp(xx, x, mu_k) in one pass; the backward
//   (x and the K output gradients -> the gradient of x and of every mu_k) in one pass, xx recomputed.
// * relu_sq_{fwd,bwd}: relu(x)^2 and its gradient g * 2 x (x > 0).
// * sigmoid_gate_bwd: of y = s * v with s = sigmoid(r) saved: gv = g s, gr = g v (1 - s) s in one pass.
// * bn_act_{fwd,bwd}: training-mode BatchNorm2d followed by ReLU, SiLU or nothing, on channels-last
//   (N*H*W, C) rows: statistics in one pass (float64 sums), normalise-and-activate in a second; the backward
//   recomputes the activation's input from x and takes its two reductions and the input gradient in two passes,
//   where autograd's BatchNorm and activation take five.
//
// Each formula is the one PyTorch evaluates (lerp's two branches, pow's and sigmoid's backward), so results
// agree with autograd's to float rounding; the mu gradients add float partial sums per image row into
// per-thread double totals, as dwconv_cpu.cpp does.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FUSED_CLONES
#endif

namespace {

// torch.lerp(start, end, w): the branch on |w| keeps the result exact at w = 0 and w = 1.
inline float lerp(float start, float end, float w) {
  const float d = end - start;
  return std::fabs(w) < 0.5f ? start + w * d : end - d * (1.0f - w);
}

// Where channel groups 0..3 of pixel (h, w) take their shifted value from: the pixel to the left, right,
// above, below (docs §2); nullptr at the border, where the shift fills zeros.
struct Shift {
  const float* src[4];
};

inline Shift sources(const float* x, int64_t n, int64_t h, int64_t w, int64_t H, int64_t W, int64_t C) {
  const float* p = x + ((n * H + h) * W + w) * C;
  return {{w > 0 ? p - C : nullptr, w < W - 1 ? p + C : nullptr, h > 0 ? p - W * C : nullptr,
           h < H - 1 ? p + W * C : nullptr}};
}

// exp(x) for x <= 0 (Cephes expf, ~1 ulp), written without calls so the channel loops vectorise; the same
// polynomial as wkv_cpu.cpp.
inline float vexp(float x) {
  x = std::max(x, -87.0f);
  const float n = float(int32_t(x * 1.44269504088896341f - 0.5f));  // round(x / ln 2), x <= 0
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (int32_t(n) + 127) << 23);
}

// sigmoid(z) with exp of a non-positive argument only, so it neither overflows nor loses the small tail.
inline float sigmoid(float z) {
  const float e = vexp(-std::fabs(z));
  return (z >= 0.0f ? 1.0f : e) / (1.0f + e);
}

enum Act : int { kNone = 0, kRelu = 1, kSilu = 2 };

// The calling thread's contiguous share [begin, end) of the rows, inside an omp parallel region.
struct RowSplit {
  int64_t begin, end;
};

inline RowSplit my_rows(int64_t rows) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  return {rows * t / nt, rows * (t + 1) / nt};
}

}  // namespace

// out[k] = lerp(q_shift(x), x, mu[k]) for k < K; x and out[k]: (N, H*W, C), mu: (K, C).
extern "C" FUSED_CLONES void token_mix_fwd_f32(const float* __restrict x, const float* __restrict mu,
                                               float* const* out, int64_t N, int64_t H, int64_t W, int64_t C,
                                               int64_t K, int threads) {
  const int64_t g = C / 4;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < N * H; ++task) {
    const int64_t n = task / H, h = task % H;
    for (int64_t w = 0; w < W; ++w) {
      const int64_t off = ((n * H + h) * W + w) * C;
      const float* p = x + off;
      const Shift s = sources(x, n, h, w, H, W, C);
      for (int64_t k = 0; k < K; ++k) {
        float* __restrict o = out[k] + off;
        const float* __restrict m = mu + k * C;
        for (int q = 0; q < 4; ++q) {
          const float* __restrict src = s.src[q];
          if (src)
            for (int64_t c = q * g; c < (q + 1) * g; ++c) o[c] = lerp(src[c], p[c], m[c]);
          else
            for (int64_t c = q * g; c < (q + 1) * g; ++c) o[c] = lerp(0.0f, p[c], m[c]);
        }
        for (int64_t c = 4 * g; c < C; ++c) o[c] = lerp(p[c], p[c], m[c]);
      }
    }
  }
}

// Backward of token_mix_fwd: gout[k] (N, H*W, C) -> gx (N, H*W, C) and gmu (K, C).
// gx = sum_k gout_k mu_k + q_shift^T(sum_k gout_k (1 - mu_k)), q_shift^T moving each group the opposite way;
// gmu_k = sum over pixels of gout_k (x - xx).
extern "C" FUSED_CLONES void token_mix_bwd_f32(const float* __restrict x, const float* __restrict mu,
                                               const float* const* gout, float* __restrict gx,
                                               float* __restrict gmu, int64_t N, int64_t H, int64_t W, int64_t C,
                                               int64_t K, int threads) {
  const int64_t g = C / 4;
  std::vector<double> total(K * C, 0.0), partial(K * C * threads, 0.0);
  std::vector<float> one_minus(K * C);
  for (int64_t t = 0; t < K * C; ++t) one_minus[t] = 1.0f - mu[t];
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> mine(K * C, 0.0);
    std::vector<float> row(K * C);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < N * H; ++task) {
      const int64_t n = task / H, h = task % H;
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t w = 0; w < W; ++w) {
        const int64_t off = ((n * H + h) * W + w) * C;
        const float* __restrict p = x + off;
        float* __restrict gp = gx + off;
        const Shift s = sources(x, n, h, w, H, W, C);
        // The pixels whose shifted value is this one: group 0 (from the left) is read by the right
        // neighbour, group 1 by the left one, group 2 (from above) by the one below, group 3 by the one above.
        const int64_t readers[4] = {w < W - 1 ? C : 0, w > 0 ? -C : 0, h < H - 1 ? W * C : 0, h > 0 ? -W * C : 0};
        for (int64_t c = 0; c < C; ++c) gp[c] = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          const float* __restrict gk = gout[k] + off;
          const float* __restrict m = mu + k * C;
          const float* __restrict om = one_minus.data() + k * C;
          float* __restrict acc = row.data() + k * C;
          for (int q = 0; q < 4; ++q) {
            const float* __restrict src = s.src[q];
            const int64_t c0 = q * g, c1 = (q + 1) * g;
            if (src)
              for (int64_t c = c0; c < c1; ++c) acc[c] += gk[c] * (p[c] - src[c]);
            else
              for (int64_t c = c0; c < c1; ++c) acc[c] += gk[c] * p[c];
            if (readers[q]) {
              const float* __restrict gr = gk + readers[q];
              for (int64_t c = c0; c < c1; ++c) gp[c] += gk[c] * m[c] + gr[c] * om[c];
            } else {
              for (int64_t c = c0; c < c1; ++c) gp[c] += gk[c] * m[c];
            }
          }
          for (int64_t c = 4 * g; c < C; ++c) gp[c] += gk[c] * m[c] + gk[c] * om[c];
        }
      }
      for (int64_t t = 0; t < K * C; ++t) mine[t] += row[t];
    }
    std::copy(mine.begin(), mine.end(), partial.begin() + K * C * omp_get_thread_num());
  }
  // the threads' sums added in thread order: the same bits on every run with this thread count
  for (size_t t = 0; t < partial.size(); ++t) total[t % (K * C)] += partial[t];
  for (int64_t t = 0; t < K * C; ++t) gmu[t] = float(total[t]);
}

// y = relu(x)^2.
extern "C" FUSED_CLONES void relu_sq_fwd_f32(const float* __restrict x, float* __restrict y, int64_t size,
                                             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < size; ++i) y[i] = x[i] > 0.0f ? x[i] * x[i] : 0.0f;
}

// gx = g * (2 x) where x > 0, else 0 (pow's backward, then relu's).
extern "C" FUSED_CLONES void relu_sq_bwd_f32(const float* __restrict x, const float* __restrict g,
                                             float* __restrict gx, int64_t size, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < size; ++i) gx[i] = x[i] > 0.0f ? g[i] * (2.0f * x[i]) : 0.0f;
}

// Of y = s * v, s = sigmoid(r): gv = g s, gr = (g v) (1 - s) s (sigmoid_backward of the product's gradient).
extern "C" FUSED_CLONES void sigmoid_gate_bwd_f32(const float* __restrict s, const float* __restrict v,
                                                  const float* __restrict g, float* __restrict gr,
                                                  float* __restrict gv, int64_t size, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < size; ++i) {
    gv[i] = g[i] * s[i];
    gr[i] = (g[i] * v[i]) * (1.0f - s[i]) * s[i];
  }
}

// Per-thread partial sums go to the thread's own slot and are added in thread order, so that a run with the
// same thread count gives the same bits every time (a critical section would add them in arrival order).
inline void publish(std::vector<double>& partial, const std::vector<double>& a, const std::vector<double>& b,
                    int64_t C) {
  double* slot = partial.data() + 2 * C * omp_get_thread_num();
  std::copy(a.begin(), a.end(), slot);
  std::copy(b.begin(), b.end(), slot + C);
}

inline void gather(const std::vector<double>& partial, std::vector<double>& a, std::vector<double>& b, int64_t c,
                   int64_t C) {
  for (size_t t = 0; t < partial.size() / (2 * C); ++t) {
    a[c] += partial[2 * C * t + c];
    b[c] += partial[2 * C * t + C + c];
  }
}

// Training-mode BatchNorm over the rows of x (M, C) (channels last), then the activation `act`:
// mean and invstd = 1 / sqrt(biased var + eps) are written out, with the unbiased variance for the running
// statistics, and y = act(x * alpha + beta), alpha = invstd * weight, beta = bias - mean * alpha (PyTorch's
// channels-last transform).
extern "C" FUSED_CLONES void bn_act_fwd_f32(const float* __restrict x, const float* __restrict weight,
                                            const float* __restrict bias, float* __restrict y,
                                            float* __restrict mean_out, float* __restrict invstd_out,
                                            float* __restrict var_unbiased, int64_t M, int64_t C, double eps,
                                            int act, int threads) {
  std::vector<double> s1(C, 0.0), s2(C, 0.0), partial(2 * C * threads, 0.0);
  std::vector<float> alpha(C), beta(C);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> a(C, 0.0), b(C, 0.0);
    const RowSplit rows = my_rows(M);
    for (int64_t m = rows.begin; m < rows.end; ++m) {
      const float* __restrict xr = x + m * C;
      for (int64_t c = 0; c < C; ++c) {
        const double v = xr[c];
        a[c] += v;
        b[c] += v * v;
      }
    }
    publish(partial, a, b, C);
#pragma omp barrier
#pragma omp single
    for (int64_t c = 0; c < C; ++c) {
      gather(partial, s1, s2, c, C);
      const double mean = s1[c] / double(M);
      const double var = std::max(s2[c] / double(M) - mean * mean, 0.0);
      const float invstd = float(1.0 / std::sqrt(var + eps));
      mean_out[c] = float(mean);
      invstd_out[c] = invstd;
      var_unbiased[c] = float(M > 1 ? var * double(M) / double(M - 1) : var);
      alpha[c] = invstd * weight[c];
      beta[c] = bias[c] - float(mean) * alpha[c];
    }
    const float* __restrict al = alpha.data();
    const float* __restrict be = beta.data();
    for (int64_t m = rows.begin; m < rows.end; ++m) {
      const float* __restrict xr = x + m * C;
      float* __restrict yr = y + m * C;
      if (act == kRelu)
        for (int64_t c = 0; c < C; ++c) yr[c] = std::max(xr[c] * al[c] + be[c], 0.0f);
      else if (act == kSilu)
        for (int64_t c = 0; c < C; ++c) {
          const float z = xr[c] * al[c] + be[c];
          yr[c] = z * sigmoid(z);
        }
      else
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * al[c] + be[c];
    }
  }
}

// act'(z) times the output gradient gr, z = x alpha + beta recomputed as bn_act_fwd computes it.
inline void grad_z(const float* __restrict xr, const float* __restrict gr, const float* __restrict al,
                   const float* __restrict be, float* __restrict out, int64_t C, int act) {
  if (act == kRelu)
    for (int64_t c = 0; c < C; ++c) out[c] = xr[c] * al[c] + be[c] > 0.0f ? gr[c] : 0.0f;
  else if (act == kSilu)
    for (int64_t c = 0; c < C; ++c) {
      const float z = xr[c] * al[c] + be[c];
      const float s = sigmoid(z);
      out[c] = gr[c] * (s * (1.0f + z * (1.0f - s)));
    }
  else
    for (int64_t c = 0; c < C; ++c) out[c] = gr[c];
}

// Backward of bn_act_fwd from x, the output gradient g and the saved mean and invstd: with gz = g act'(z),
// sum = sum_rows gz, dot = sum_rows gz (x - mean) (float64): gweight = dot invstd, gbias = sum and
// gx = (gz - sum / M - (x - mean) dot invstd^2 / M) invstd weight (PyTorch's batch_norm_backward).
extern "C" FUSED_CLONES void bn_act_bwd_f32(const float* __restrict x, const float* __restrict g,
                                            const float* __restrict weight, const float* __restrict bias,
                                            const float* __restrict mean, const float* __restrict invstd,
                                            float* __restrict gx, float* __restrict gweight,
                                            float* __restrict gbias, int64_t M, int64_t C, int act,
                                            int threads) {
  std::vector<double> sum(C, 0.0), dot(C, 0.0), partial(2 * C * threads, 0.0);
  std::vector<float> alpha(C), beta(C), k(C), gmean(C), scale(C);
  for (int64_t c = 0; c < C; ++c) {
    alpha[c] = invstd[c] * weight[c];
    beta[c] = bias[c] - mean[c] * alpha[c];
  }
  const float* __restrict al = alpha.data();
  const float* __restrict be = beta.data();
  const float* __restrict mu = mean;
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> a(C, 0.0), b(C, 0.0);
    std::vector<float> gz(C);
    float* __restrict gzp = gz.data();
    const RowSplit rows = my_rows(M);
    for (int64_t m = rows.begin; m < rows.end; ++m) {
      const float* __restrict xr = x + m * C;
      grad_z(xr, g + m * C, al, be, gzp, C, act);
      for (int64_t c = 0; c < C; ++c) {
        a[c] += gzp[c];
        b[c] += double(gzp[c]) * double(xr[c] - mu[c]);
      }
    }
    publish(partial, a, b, C);
#pragma omp barrier
#pragma omp single
    for (int64_t c = 0; c < C; ++c) {
      gather(partial, sum, dot, c, C);
      gweight[c] = float(dot[c] * invstd[c]);
      gbias[c] = float(sum[c]);
      k[c] = float(dot[c] * invstd[c] * invstd[c] / double(M));
      gmean[c] = float(sum[c] / double(M));
      scale[c] = invstd[c] * weight[c];
    }
    if (gx) {
      const float* __restrict kk = k.data();
      const float* __restrict gm = gmean.data();
      const float* __restrict sc = scale.data();
      for (int64_t m = rows.begin; m < rows.end; ++m) {
        const float* __restrict xr = x + m * C;
        float* __restrict out = gx + m * C;
        grad_z(xr, g + m * C, al, be, gzp, C, act);
        for (int64_t c = 0; c < C; ++c) out[c] = (gzp[c] - gm[c] - (xr[c] - mu[c]) * kk[c]) * sc[c];
      }
    }
  }
}
