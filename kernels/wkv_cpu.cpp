// Bi-WKV on the CPU (docs §2): exact O(T) scans in log space. Plain C++ with a C ABI (called through
// ctypes), without torch headers, so the JIT build takes seconds.
//
// Per (batch, block of channels) the sums over the tokens left and right of t are first-order
// recurrences with the constant factor exp(-w). A state "seen from" position x holds sums of
// exp(x_i - (|x-i| - 1) w) * values_i scaled by exp(-p), where p is the largest of those log-weights, so
// every exp() below has an argument <= 0 whatever the sign and size of w, u and k. p is not updated
// by p -= w at each step (that accumulates rounding over T steps): the state keeps the token that
// attains it, its log-weight m at distance 0 and its distance n, and p = m - n w is computed afresh.
// Empty sums use m = kEmpty (finite, so no inf arithmetic). States are double whatever the input type.
//
// Forward writes y and lz = log(denominator of y_t). With P_ti = exp(L_ti - lz_t) the gradients are
//   gv_i = sum_t P_ti g_t,  gk_i = sum_t P_ti g_t (v_i - y_t),  gu = sum_t P_tt g_t (v_t - y_t),
//   gw   = -sum_{t != i} (|t-i| - 1) P_ti g_t (v_i - y_t),
// and the sums over t are the same kind of recurrences over "sources" t with log-weight -lz_t. Backward
// runs them left-to-right then right-to-left, each adding its share into gk and gv.
// Channels are the contiguous axis: a task owns kBlock channels, so every load is a whole cache line
// and the channel loops vectorise (exp and log are written as polynomials for that reason).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One build runs on any x86-64 and uses AVX2 where the CPU has it (AVX-512 measured slower here).
#define WKV_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WKV_CLONES
#endif

namespace {

constexpr int64_t kBlock = 16;
constexpr float kEmpty = -1e30f;

// exp(x) for x <= 0 (Cephes expf, ~1 ulp). Below -87 it returns ~1e-38 instead of 0, which only ever
// multiplies sums bounded by the largest term (weight 1), so it is lost in rounding.
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

// log(x) for normal x > 0 (Cephes logf, ~1 ulp); here x is a softmax denominator, >= 1.
inline float vlog(float x) {
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  float e = float(((bits >> 23) & 0xff) - 126);
  float m = __builtin_bit_cast(float, (bits & 0x807fffff) | 0x3f000000);  // x = m 2^e, m in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

// exp and log of double arguments, evaluated at the precision of the storage type S: float inputs take
// the vectorisable float polynomials. The arguments themselves are always formed in double: they are
// differences of log-weights of size ~|lz|, whose float rounding (~1e-6) would reach the gradient of w
// amplified ~30x by its cancellations.
template <typename S>
inline double ex(double x) {
  if constexpr (std::is_same_v<S, float>) return vexp(float(x));
  else return std::exp(x);
}
template <typename S>
inline double lg(double x) {
  if constexpr (std::is_same_v<S, float>) return vlog(float(x));
  else return std::log(x);
}

template <typename S>
struct Fwd {
  // Numerator a e^p and denominator b e^p, p = m - n w.
  double a[kBlock], b[kBlock], m[kBlock], n[kBlock];
  void clear() {
    for (int64_t c = 0; c < kBlock; ++c) a[c] = b[c] = n[c] = 0, m[c] = kEmpty;
  }
  // Move one position further from the sources, then add token (k, v) at distance 0.
  void push(const S* k, const S* v, const double* w, int64_t nc) {
    for (int64_t c = 0; c < nc; ++c) {
      const double x = k[c], n1 = n[c] + 1, p1 = m[c] - n1 * w[c];
      const bool take = x > p1;  // the new token becomes the largest term
      const double e = ex<S>(take ? p1 - x : x - p1), e_old = take ? e : 1.0, e_new = take ? 1.0 : e;
      a[c] = a[c] * e_old + v[c] * e_new;
      b[c] = b[c] * e_old + e_new;
      m[c] = take ? x : m[c];
      n[c] = take ? 0.0 : n1;
    }
  }
};

template <typename S>
struct Bwd {
  // s1 = sum e g, s2 = sum e g y; d1, d2: the same weighted by the distance |x-t| - 1; scale p = m - n w.
  double s1[kBlock], s2[kBlock], d1[kBlock], d2[kBlock], m[kBlock], n[kBlock];
  void clear() {
    for (int64_t c = 0; c < kBlock; ++c) s1[c] = s2[c] = d1[c] = d2[c] = n[c] = 0, m[c] = kEmpty;
  }
  // Adds this side's share of the gradients of token i (k, v).
  void emit(const S* k, const S* v, const double* w, double* gk, double* gv, double* gw, int64_t nc) const {
    for (int64_t c = 0; c < nc; ++c) {
      const double f = ex<S>(k[c] + (m[c] - n[c] * w[c]));  // <= 1: the largest P_ti of the state's sources
      gv[c] += f * s1[c];
      gk[c] += f * (v[c] * s1[c] - s2[c]);
      gw[c] -= f * (v[c] * d1[c] - d2[c]);
    }
  }
  void push(const S* lz, const S* g, const S* y, const double* w, int64_t nc) {
    for (int64_t c = 0; c < nc; ++c) {
      d1[c] += s1[c];
      d2[c] += s2[c];
      const double x = -double(lz[c]), n1 = n[c] + 1, p1 = m[c] - n1 * w[c];
      const bool take = x > p1;
      const double e = ex<S>(take ? p1 - x : x - p1), e_old = take ? e : 1.0, e_new = take ? 1.0 : e;
      s1[c] = s1[c] * e_old + g[c] * e_new;
      s2[c] = s2[c] * e_old + double(g[c]) * y[c] * e_new;
      d1[c] *= e_old;
      d2[c] *= e_old;
      m[c] = take ? x : m[c];
      n[c] = take ? 0.0 : n1;
    }
  }
};

// One (batch, channel block): pointers start at its first element, rows are C apart.
template <typename S>
WKV_CLONES void forward_task(const S* __restrict k, const S* __restrict v, const S* __restrict w_,
                             const S* __restrict u, S* __restrict y, S* __restrict lz, Fwd<S>* __restrict left,
                             int64_t T, int64_t C, int64_t nc) {
  double w[kBlock] = {};
  std::copy_n(w_, nc, w);
  Fwd<S> st;
  st.clear();
  for (int64_t t = 0; t < T; ++t) {
    left[t] = st;
    st.push(k + t * C, v + t * C, w, nc);
  }
  st.clear();
  for (int64_t t = T - 1; t >= 0; --t) {
    const S* kt = k + t * C;
    const S* vt = v + t * C;
    const Fwd<S>& l = left[t];
    for (int64_t c = 0; c < nc; ++c) {
      const double self = double(u[c]) + kt[c], pl = l.m[c] - l.n[c] * w[c], pr = st.m[c] - st.n[c] * w[c];
      const double m = std::max(std::max(pl, pr), self);
      const double el = ex<S>(pl - m), er = ex<S>(pr - m), es = ex<S>(self - m);
      const double den = l.b[c] * el + st.b[c] * er + es;
      y[t * C + c] = S((l.a[c] * el + st.a[c] * er + vt[c] * es) / den);
      lz[t * C + c] = S(m + lg<S>(den));
    }
    st.push(kt, vt, w, nc);
  }
}

template <typename S>
WKV_CLONES void backward_task(const S* __restrict k, const S* __restrict v, const S* __restrict w_,
                              const S* __restrict u, const S* __restrict y, const S* __restrict lz,
                              const S* __restrict gy, S* __restrict gk_out, S* __restrict gv_out,
                              double* __restrict gw, double* __restrict gu, double* __restrict acc, int64_t T,
                              int64_t C, int64_t nc) {
  double w[kBlock] = {};
  std::copy_n(w_, nc, w);
  // acc holds gk, gv for the block in double until both directions are added: (T, 2, kBlock).
  Bwd<S> st;
  st.clear();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t o = t * C;
    double* gk = acc + t * 2 * kBlock;
    double* gv = gk + kBlock;
    for (int64_t c = 0; c < nc; ++c) {  // the token's own logit u + k_t
      const double e = ex<S>(double(u[c]) + k[o + c] - lz[o + c]) * gy[o + c];
      gv[c] = e;
      gk[c] = e * (double(v[o + c]) - y[o + c]);
      gu[c] += gk[c];
    }
    st.emit(k + o, v + o, w, gk, gv, gw, nc);
    st.push(lz + o, gy + o, y + o, w, nc);
  }
  st.clear();
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t o = t * C;
    double* gk = acc + t * 2 * kBlock;
    double* gv = gk + kBlock;
    st.emit(k + o, v + o, w, gk, gv, gw, nc);
    st.push(lz + o, gy + o, y + o, w, nc);
    for (int64_t c = 0; c < nc; ++c) {
      gk_out[o + c] = S(gk[c]);
      gv_out[o + c] = S(gv[c]);
    }
  }
}

template <typename S>
void forward(const S* k, const S* v, const S* w, const S* u, S* y, S* lz, int64_t N, int64_t T, int64_t C,
             int threads) {
  const int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Fwd<S>> left(T);  // per t, the state of the tokens left of t
#pragma omp for schedule(static)
    for (int64_t task = 0; task < N * blocks; ++task) {
      const int64_t c0 = (task % blocks) * kBlock, off = (task / blocks) * T * C + c0;
      forward_task(k + off, v + off, w + c0, u + c0, y + off, lz + off, left.data(), T, C,
                   std::min(kBlock, C - c0));
    }
  }
}

// gw_part and gu_part are (N, C) in float64: one partial sum per batch item, reduced by the caller.
template <typename S>
void backward(const S* k, const S* v, const S* w, const S* u, const S* y, const S* lz, const S* gy, S* gk, S* gv,
              double* gw_part, double* gu_part, int64_t N, int64_t T, int64_t C, int threads) {
  const int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> acc(T * 2 * kBlock);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < N * blocks; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * kBlock, off = n * T * C + c0;
      std::fill_n(gw_part + n * C + c0, std::min(kBlock, C - c0), 0.0);
      std::fill_n(gu_part + n * C + c0, std::min(kBlock, C - c0), 0.0);
      backward_task(k + off, v + off, w + c0, u + c0, y + off, lz + off, gy + off, gk + off, gv + off,
                    gw_part + n * C + c0, gu_part + n * C + c0, acc.data(), T, C, std::min(kBlock, C - c0));
    }
  }
}

}  // namespace

// C ABI for ctypes: contiguous (N, T, C) arrays and (C,) vectors; _f32 and _f64 differ in type only.
extern "C" {

void wkv_forward_f32(const float* k, const float* v, const float* w, const float* u, float* y, float* lz,
                     int64_t N, int64_t T, int64_t C, int threads) {
  forward(k, v, w, u, y, lz, N, T, C, threads);
}

void wkv_forward_f64(const double* k, const double* v, const double* w, const double* u, double* y, double* lz,
                     int64_t N, int64_t T, int64_t C, int threads) {
  forward(k, v, w, u, y, lz, N, T, C, threads);
}

void wkv_backward_f32(const float* k, const float* v, const float* w, const float* u, const float* y,
                      const float* lz, const float* gy, float* gk, float* gv, double* gw_part, double* gu_part,
                      int64_t N, int64_t T, int64_t C, int threads) {
  backward(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, threads);
}

void wkv_backward_f64(const double* k, const double* v, const double* w, const double* u, const double* y,
                      const double* lz, const double* gy, double* gk, double* gv, double* gw_part, double* gu_part,
                      int64_t N, int64_t T, int64_t C, int threads) {
  backward(k, v, w, u, y, lz, gy, gk, gv, gw_part, gu_part, N, T, C, threads);
}

}  // extern "C"
