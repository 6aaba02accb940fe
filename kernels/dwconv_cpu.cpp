// Weight gradient of a depthwise 2D convolution on the CPU, channels-last (N, H, W, C) tensors.
// Plain C++ with a C ABI (called through ctypes), like wkv_cpu.cpp.
//
// gw[c, i, j] = sum_{n, ho, wo} x[n, ho*s + i - p, wo*s + j - p, c] * g[n, ho, wo, c] (zero outside the image).
// PyTorch's CPU backward for this case spends ~8x the forward's time on it; here each task (a band of output
// rows) accumulates all K*K taps for every channel with the channel axis innermost, so the loads are contiguous
// and the loop vectorises. Each output row is summed in float, then added into a per-thread double total, so
// the rounding stays within that of a float sum over one row.

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One build runs on any x86-64 and uses AVX2 where the CPU has it (as in wkv_cpu.cpp).
#define DW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DW_CLONES
#endif

extern "C" DW_CLONES void dw_weight_grad_f32(const float* __restrict x, const float* __restrict g, float* __restrict gw,
                                   int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo, int64_t K,
                                   int64_t stride, int64_t pad, int threads) {
  const int64_t taps = K * K * C;
  std::vector<double> total(taps, 0.0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(taps);
    std::vector<double> mine(taps, 0.0);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < N * Ho; ++task) {
      const int64_t n = task / Ho, ho = task % Ho;
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const float* gr = g + ((n * Ho + ho) * Wo + wo) * C;
        for (int64_t i = 0; i < K; ++i) {
          const int64_t hi = ho * stride + i - pad;
          if (hi < 0 || hi >= H) continue;
          for (int64_t j = 0; j < K; ++j) {
            const int64_t wi = wo * stride + j - pad;
            if (wi < 0 || wi >= W) continue;
            const float* xr = x + ((n * H + hi) * W + wi) * C;
            float* a = row.data() + (i * K + j) * C;
            for (int64_t c = 0; c < C; ++c) a[c] += xr[c] * gr[c];
          }
        }
      }
      for (int64_t t = 0; t < taps; ++t) mine[t] += row[t];
    }
#pragma omp critical
    for (int64_t t = 0; t < taps; ++t) total[t] += mine[t];
  }
  // (K, K, C) -> the weight's (C, 1, K, K) layout.
  for (int64_t t = 0; t < K * K; ++t)
    for (int64_t c = 0; c < C; ++c) gw[c * K * K + t] = float(total[t * C + c]);
}
