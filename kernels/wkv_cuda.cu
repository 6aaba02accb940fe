// Bi-WKV forward and backward on CUDA (docs §2): exact, O(T), any N, T and C.
// Plain CUDA with a C ABI (called through ctypes), without torch headers, so the JIT build is short.
// rwkvlab/ops/_cpu.py:ChunkedScan is the same algorithm in PyTorch; the tests check it on the CPU.
//
// A block owns one batch item and kChannels channels for the whole sequence. Each channel's sequence
// is cut into kChunks chunks, one thread per (channel, chunk); a warp covers 8 channels x 4 chunks, so
// every load of a token row is a full 32-byte sector (fp32).
//   1. Each thread summarises its chunk from both ends: the sum over its tokens seen from just past
//      its end, and seen from just before its start.
//   2. Each thread combines the summaries of the chunks left (right) of it into the state entering
//      its chunk from the left (right).
//   3. Each thread scans its chunk left to right, then right to left, and writes its outputs.
// The block first copies what steps 1 and 3 both read into shared memory when it fits, so those
// inputs are read from DRAM once (forward: k, v, write y, lz; backward: also y, lz, g, write gk, gv).
//
// A state "seen from" position x holds sums of exp(x_i - (|x - i| - 1) w) * values_i divided by e^p,
// p being the largest of those log-weights, so every exp() has an argument <= 0. The state keeps that
// source's log-weight m at distance 0 and its distance n, and p = m - n w is recomputed from them
// (p -= w at every step would drift). Log-weights and sums are double: the log-weights are ~|lz| in
// size with differences ~1, and the gradient of w cancels over T^2 terms; exp and log are evaluated
// at the input precision (expf for fp32/fp16/bf16), their arguments being <= 0.
//
// Forward writes y and lz = log(denominator). Backward, with P_ti = exp(L_ti - lz_t):
//   gv_i = sum_t P_ti g_t,  gk_i = sum_t P_ti g_t (v_i - y_t),  gu = sum_t P_tt g_t (v_t - y_t),
//   gw = -sum_{t != i} (|t-i| - 1) P_ti g_t (v_i - y_t),
// sums over "sources" t with log-weight -lz_t and values (g_t, g_t y_t) plus their distance-weighted
// copies (d1, d2), which the same three steps compute.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int kChannels = 8;
constexpr int kChunks = 32;
constexpr int kThreads = kChannels * kChunks;
constexpr double kEmpty = -1e30;  // log-scale of an empty sum: finite, so empty states combine safely
// Shared memory per block at most, so that two blocks fit on an SM (H100: 228 KB).
constexpr size_t kMaxSharedBytes = 100 * 1024;

// y, lz, gk, gv are written as float for fp32/fp16/bf16 inputs (the caller casts them back).
template <typename T>
struct Out {
  using type = float;
};
template <>
struct Out<double> {
  using type = double;
};

__device__ __forceinline__ double ld(const float* p) { return *p; }
__device__ __forceinline__ double ld(const double* p) { return *p; }
__device__ __forceinline__ double ld(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ double ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T>
__device__ __forceinline__ double ex(double x) {
  return expf(float(x));
}
template <>
__device__ __forceinline__ double ex<double>(double x) {
  return exp(x);
}
template <typename T>
__device__ __forceinline__ double lg(double x) {
  return logf(float(x));
}
template <>
__device__ __forceinline__ double lg<double>(double x) {
  return log(x);
}

// Token rows of one channel: in the shared-memory tile (stride kChannels) or in global memory (stride C).
template <typename T>
struct Rows {
  const T* p;
  int64_t stride;
  __device__ __forceinline__ double operator[](int64_t t) const { return ld(p + t * stride); }
};

// Forward state: numerator a e^p and denominator b e^p.
struct Fwd {
  double a, b, m, n;
};

__device__ __forceinline__ Fwd fwd_empty() { return {0.0, 0.0, kEmpty, 0.0}; }

// Adds sums (a, b) whose largest log-weight is x at distance dist.
template <typename T>
__device__ __forceinline__ void fwd_add(Fwd& s, double x, double dist, double a, double b, double w) {
  const double p_new = x - dist * w, p_old = s.m - s.n * w;
  const bool take = p_new > p_old;
  const double e = ex<T>(take ? p_old - p_new : p_new - p_old);
  const double e_old = take ? e : 1.0, e_new = take ? 1.0 : e;
  s.a = s.a * e_old + a * e_new;
  s.b = s.b * e_old + b * e_new;
  if (take) s.m = x, s.n = dist;
}

// Moves one position further from the sources, then adds token (x, v) at distance 0.
template <typename T>
__device__ __forceinline__ void fwd_push(Fwd& s, double x, double v, double w) {
  s.n += 1.0;
  fwd_add<T>(s, x, 0.0, v, 1.0, w);
}

// Backward state: s1 = sum e g, s2 = sum e g y, d1, d2 the same weighted by the distance.
struct Bwd {
  double s1, s2, d1, d2, m, n;
};

__device__ __forceinline__ Bwd bwd_empty() { return {0.0, 0.0, 0.0, 0.0, kEmpty, 0.0}; }

template <typename T>
__device__ __forceinline__ void bwd_add(Bwd& s, double x, double dist, double s1, double s2, double d1, double d2,
                                        double w) {
  const double p_new = x - dist * w, p_old = s.m - s.n * w;
  const bool take = p_new > p_old;
  const double e = ex<T>(take ? p_old - p_new : p_new - p_old);
  const double e_old = take ? e : 1.0, e_new = take ? 1.0 : e;
  s.s1 = s.s1 * e_old + s1 * e_new;
  s.s2 = s.s2 * e_old + s2 * e_new;
  s.d1 = s.d1 * e_old + d1 * e_new;
  s.d2 = s.d2 * e_old + d2 * e_new;
  if (take) s.m = x, s.n = dist;
}

template <typename T>
__device__ __forceinline__ void bwd_push(Bwd& s, double x, double g, double gy, double w) {
  s.d1 += s.s1;
  s.d2 += s.s2;
  s.n += 1.0;
  bwd_add<T>(s, x, 0.0, g, gy, 0.0, 0.0, w);
}

// The thread's place: channel lane, chunk j, tokens [t0, t1); chunk m spans [start(m), end(m)).
struct Place {
  int lane, j;
  int64_t n, c, len, t0, t1;
  bool active;
  __device__ int64_t start(int m, int64_t T) const { return min(T, m * len); }
  __device__ int64_t end(int m, int64_t T) const { return min(T, (m + 1) * len); }
};

__device__ __forceinline__ Place place(int64_t T, int64_t C, int64_t cblocks) {
  Place q;
  q.lane = threadIdx.x % kChannels;
  q.j = threadIdx.x / kChannels;
  q.n = blockIdx.x / cblocks;
  q.c = (blockIdx.x % cblocks) * kChannels + q.lane;
  q.active = q.c < C;
  q.len = (T + kChunks - 1) / kChunks;
  q.t0 = q.start(q.j, T);
  q.t1 = q.end(q.j, T);
  return q;
}

// Copies rows [0, T) of the block's channels of x (N, T, C) into tile (T, kChannels); returns its view.
template <typename T>
__device__ Rows<T> stage(const T* x, T* tile, bool cached, const Place& q, int64_t T_, int64_t C) {
  const int64_t c0 = q.c - q.lane;
  if (!cached) return {x + q.n * T_ * C + q.c, C};
  for (int64_t i = threadIdx.x; i < T_ * kChannels; i += kThreads) {
    const int64_t t = i / kChannels, c = c0 + i % kChannels;
    if (c < C) tile[i] = x[(q.n * T_ + t) * C + c];
  }
  return {tile + q.lane, kChannels};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ k, const T* __restrict__ v, const double* __restrict__ w_,
                   const double* __restrict__ u_, typename Out<T>::type* __restrict__ y,
                   typename Out<T>::type* __restrict__ lz, int64_t T_, int64_t C, int64_t cblocks, bool cached) {
  extern __shared__ __align__(16) unsigned char smem[];
  Fwd* sum_l = reinterpret_cast<Fwd*>(smem);  // [kChunks][kChannels]
  Fwd* sum_r = sum_l + kThreads;
  T* tile = reinterpret_cast<T*>(sum_r + kThreads);
  const Place q = place(T_, C, cblocks);
  const Rows<T> K = stage(k, tile, cached, q, T_, C);
  const Rows<T> V = stage(v, tile + T_ * kChannels, cached, q, T_, C);
  if (cached) __syncthreads();
  const double w = q.active ? w_[q.c] : 0.0, u = q.active ? u_[q.c] : 0.0;

  // 1. Chunk summaries.
  Fwd sl = fwd_empty(), sr = fwd_empty();
  if (q.active) {
    for (int64_t t = q.t0; t < q.t1; ++t) {
      const double x = K[t], vv = V[t];
      fwd_add<T>(sl, x, double(q.t1 - 1 - t), vv, 1.0, w);
      fwd_add<T>(sr, x, double(t - q.t0), vv, 1.0, w);
    }
  }
  sum_l[q.j * kChannels + q.lane] = sl;
  sum_r[q.j * kChannels + q.lane] = sr;
  __syncthreads();
  if (!q.active) return;  // no barrier follows

  // 2 and 3, left to right: keep the left state of each token as a mean and a log-denominator in y, lz.
  const int64_t base = q.n * T_ * C + q.c;
  Fwd st = fwd_empty();
  for (int m = 0; m < q.j; ++m) {
    const Fwd o = sum_l[m * kChannels + q.lane];
    fwd_add<T>(st, o.m, o.n + double(q.t0 - q.end(m, T_)), o.a, o.b, w);
  }
  for (int64_t t = q.t0; t < q.t1; ++t) {
    y[base + t * C] = st.b > 0.0 ? st.a / st.b : 0.0;
    lz[base + t * C] = (st.m - st.n * w) + lg<T>(st.b);  // -inf when nothing is left of t
    fwd_push<T>(st, K[t], V[t], w);
  }
  // Right to left: combine with the right state and the token itself.
  st = fwd_empty();
  for (int m = q.j + 1; m < kChunks; ++m) {
    const Fwd o = sum_r[m * kChannels + q.lane];
    fwd_add<T>(st, o.m, o.n + double(q.start(m, T_) - q.t1), o.a, o.b, w);
  }
  for (int64_t t = q.t1 - 1; t >= q.t0; --t) {
    const double x = K[t], vv = V[t];
    const double ll = lz[base + t * C], lm = y[base + t * C];
    const double pr = st.m - st.n * w, ps = u + x;
    const double mx = fmax(fmax(ll, pr), ps);
    const double el = ex<T>(ll - mx), er = ex<T>(pr - mx), es = ex<T>(ps - mx);
    const double den = el + st.b * er + es;
    y[base + t * C] = (lm * el + st.a * er + vv * es) / den;
    lz[base + t * C] = mx + lg<T>(den);
    fwd_push<T>(st, x, vv, w);
  }
}

// gw_part, gu_part: (N, C) partial sums, reduced over N by the caller.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ k, const T* __restrict__ v, const double* __restrict__ w_,
                    const double* __restrict__ u_, const typename Out<T>::type* __restrict__ y,
                    const typename Out<T>::type* __restrict__ lz, const T* __restrict__ gy,
                    typename Out<T>::type* __restrict__ gk, typename Out<T>::type* __restrict__ gv,
                    double* __restrict__ gw_part, double* __restrict__ gu_part, int64_t T_, int64_t C,
                    int64_t cblocks, bool cached) {
  using O = typename Out<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  Bwd* sum_l = reinterpret_cast<Bwd*>(smem);  // [kChunks][kChannels]
  Bwd* sum_r = sum_l + kThreads;
  O* tile_o = reinterpret_cast<O*>(sum_r + kThreads);
  T* tile_g = reinterpret_cast<T*>(tile_o + 2 * T_ * kChannels);
  const Place q = place(T_, C, cblocks);
  const Rows<O> LZ = stage(lz, tile_o, cached, q, T_, C);
  const Rows<O> Y = stage(y, tile_o + T_ * kChannels, cached, q, T_, C);
  const Rows<T> G = stage(gy, tile_g, cached, q, T_, C);
  if (cached) __syncthreads();
  const Rows<T> K{k + q.n * T_ * C + q.c, C}, V{v + q.n * T_ * C + q.c, C};
  const double w = q.active ? w_[q.c] : 0.0, u = q.active ? u_[q.c] : 0.0;

  // 1. Chunk summaries of the sources.
  Bwd sl = bwd_empty(), sr = bwd_empty();
  if (q.active) {
    for (int64_t t = q.t0; t < q.t1; ++t) {
      const double x = -LZ[t], g = G[t], gyy = g * Y[t];
      const double dl = double(q.t1 - 1 - t), dr = double(t - q.t0);
      bwd_add<T>(sl, x, dl, g, gyy, dl * g, dl * gyy, w);
      bwd_add<T>(sr, x, dr, g, gyy, dr * g, dr * gyy, w);
    }
  }
  sum_l[q.j * kChannels + q.lane] = sl;
  sum_r[q.j * kChannels + q.lane] = sr;
  __syncthreads();

  // 2 and 3: each direction adds its share into gk, gv; the first also the token's own logit.
  double gw = 0.0, gu = 0.0;
  if (q.active) {
    const int64_t base = q.n * T_ * C + q.c;
    Bwd st = bwd_empty();
    for (int m = 0; m < q.j; ++m) {
      const Bwd o = sum_l[m * kChannels + q.lane];
      const double d = double(q.t0 - q.end(m, T_));
      bwd_add<T>(st, o.m, o.n + d, o.s1, o.s2, o.d1 + d * o.s1, o.d2 + d * o.s2, w);
    }
    for (int64_t t = q.t0; t < q.t1; ++t) {
      const double x = K[t], vv = V[t], l = LZ[t], g = G[t], yy = Y[t];
      const double e = ex<T>(u + x - l) * g;
      const double f = ex<T>(x + (st.m - st.n * w));  // <= 1: the largest P_ti of the state's sources
      gu += e * (vv - yy);
      gw -= f * (vv * st.d1 - st.d2);
      gv[base + t * C] = O(e + f * st.s1);
      gk[base + t * C] = O(e * (vv - yy) + f * (vv * st.s1 - st.s2));
      bwd_push<T>(st, -l, g, g * yy, w);
    }
    st = bwd_empty();
    for (int m = q.j + 1; m < kChunks; ++m) {
      const Bwd o = sum_r[m * kChannels + q.lane];
      const double d = double(q.start(m, T_) - q.t1);
      bwd_add<T>(st, o.m, o.n + d, o.s1, o.s2, o.d1 + d * o.s1, o.d2 + d * o.s2, w);
    }
    for (int64_t t = q.t1 - 1; t >= q.t0; --t) {
      const double x = K[t], vv = V[t], g = G[t];
      const double f = ex<T>(x + (st.m - st.n * w));
      gw -= f * (vv * st.d1 - st.d2);
      gv[base + t * C] = O(double(gv[base + t * C]) + f * st.s1);
      gk[base + t * C] = O(double(gk[base + t * C]) + f * (vv * st.s1 - st.s2));
      bwd_push<T>(st, -LZ[t], g, g * Y[t], w);
    }
  }

  // Reduce gw, gu over the chunks of each channel, in a fixed order (deterministic).
  __syncthreads();  // the summaries are no longer read
  double* red = reinterpret_cast<double*>(smem);  // [2][kChunks][kChannels]
  red[q.j * kChannels + q.lane] = gw;
  red[kThreads + q.j * kChannels + q.lane] = gu;
  __syncthreads();
  if (q.j == 0 && q.active) {
    double sw = 0.0, su = 0.0;
    for (int m = 0; m < kChunks; ++m) {
      sw += red[m * kChannels + q.lane];
      su += red[kThreads + m * kChannels + q.lane];
    }
    gw_part[q.n * C + q.c] = sw;
    gu_part[q.n * C + q.c] = su;
  }
}

// Dynamic shared memory: the summaries, plus the tile when it fits in kMaxSharedBytes and the device.
template <typename Kernel>
cudaError_t shared_memory(Kernel kernel, size_t fixed, size_t tile, size_t* bytes, bool* cached) {
  int device = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  *cached = fixed + tile <= std::min(kMaxSharedBytes, size_t(limit));
  *bytes = fixed + (*cached ? tile : 0);
  if (*bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(*bytes));
}

template <typename T>
cudaError_t forward(const void* k, const void* v, const void* w, const void* u, void* y, void* lz, int64_t N,
                    int64_t T_, int64_t C, cudaStream_t stream) {
  using O = typename Out<T>::type;
  const int64_t cblocks = (C + kChannels - 1) / kChannels;
  size_t bytes;
  bool cached;
  const cudaError_t err = shared_memory(forward_kernel<T>, 2 * kThreads * sizeof(Fwd),
                                        2 * size_t(T_) * kChannels * sizeof(T), &bytes, &cached);
  if (err != cudaSuccess) return err;
  forward_kernel<T><<<unsigned(N * cblocks), kThreads, bytes, stream>>>(
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const double*>(w),
      static_cast<const double*>(u), static_cast<O*>(y), static_cast<O*>(lz), T_, C, cblocks, cached);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const void* k, const void* v, const void* w, const void* u, const void* y, const void* lz,
                     const void* gy, void* gk, void* gv, void* gw_part, void* gu_part, int64_t N, int64_t T_,
                     int64_t C, cudaStream_t stream) {
  using O = typename Out<T>::type;
  const int64_t cblocks = (C + kChannels - 1) / kChannels;
  size_t bytes;
  bool cached;
  const cudaError_t err = shared_memory(backward_kernel<T>, 2 * kThreads * sizeof(Bwd),
                                        size_t(T_) * kChannels * (2 * sizeof(O) + sizeof(T)), &bytes, &cached);
  if (err != cudaSuccess) return err;
  backward_kernel<T><<<unsigned(N * cblocks), kThreads, bytes, stream>>>(
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const double*>(w),
      static_cast<const double*>(u), static_cast<const O*>(y), static_cast<const O*>(lz),
      static_cast<const T*>(gy), static_cast<O*>(gk), static_cast<O*>(gv), static_cast<double*>(gw_part),
      static_cast<double*>(gu_part), T_, C, cblocks, cached);
  return cudaGetLastError();
}

}  // namespace

// C ABI for ctypes. dtype of k, v, gy: 0 float32, 1 float64, 2 float16, 3 bfloat16; w, u and the
// gw/gu partials (N, C) are float64; y, lz, gk, gv are float64 for float64 inputs, else float32.
// All arrays are contiguous on the current device; returns a cudaError_t.
extern "C" {

int wkv_cuda_forward(int dtype, const void* k, const void* v, const void* w, const void* u, void* y, void* lz,
                     int64_t N, int64_t T, int64_t C, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return forward<float>(k, v, w, u, y, lz, N, T, C, s);
    case 1: return forward<double>(k, v, w, u, y, lz, N, T, C, s);
    case 2: return forward<__half>(k, v, w, u, y, lz, N, T, C, s);
    case 3: return forward<__nv_bfloat16>(k, v, w, u, y, lz, N, T, C, s);
    default: return cudaErrorInvalidValue;
  }
}

int wkv_cuda_backward(int dtype, const void* k, const void* v, const void* w, const void* u, const void* y,
                      const void* lz, const void* gy, void* gk, void* gv, void* gw_part, void* gu_part, int64_t N,
                      int64_t T, int64_t C, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return backward<float>(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, s);
    case 1: return backward<double>(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, s);
    case 2: return backward<__half>(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, s);
    case 3: return backward<__nv_bfloat16>(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, s);
    default: return cudaErrorInvalidValue;
  }
}

const char* wkv_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // extern "C"
