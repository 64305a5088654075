// The elementwise kernel epilogues of csrc/kernel_common.h (and the Hadamard step of the
// structured NTK), compiled for three ISA levels.
//
// The loops of epilogue_body.inc are plain C++ that GCC auto-vectorises. The file is included
// three times, each time in its own namespace under `#pragma GCC target`, so that every helper
// (not only the outer function) is compiled for that ISA; isa_level() picks one at run time.
#include "kernel_common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FK_MULTIVERSION 1
#else
#define FK_MULTIVERSION 0
#endif
#define FK_INLINE inline __attribute__((always_inline))

namespace fastkernels {
namespace {

#if FK_MULTIVERSION
namespace avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
#include "epilogue_body.inc"
#pragma GCC pop_options
}  // namespace avx512
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "epilogue_body.inc"
#pragma GCC pop_options
}  // namespace avx2
#endif
namespace base {
#include "epilogue_body.inc"
}  // namespace base

// 2: AVX-512, 1: AVX2 + FMA, 0: baseline. FASTKERNELS_CPU_ISA=0/1/2 caps it (to test the
// fallbacks on a machine that has more).
int isa_level() {
  static const int level = [] {
    int lv = 0;
#if FK_MULTIVERSION
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) lv = 1;
    if (lv == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
      lv = 2;
    }
#endif
    if (const char* cap = std::getenv("FASTKERNELS_CPU_ISA")) {
      const int c = std::atoi(cap);
      if (c >= 0 && c < lv) lv = c;
    }
    return lv;
  }();
  return level;
}

}  // namespace

void epilogue_float(const Spec& sp, float* tile, const Tile& t, const float* n1,
                    const float* n2) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::epi_f(sp, tile, t, n1, n2);
  if (lv == 1) return avx2::epi_f(sp, tile, t, n1, n2);
#endif
  base::epi_f(sp, tile, t, n1, n2);
}

void epilogue_double(const Spec& sp, double* tile, const Tile& t, const double* n1,
                     const double* n2) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::epi_d(sp, tile, t, n1, n2);
  if (lv == 1) return avx2::epi_d(sp, tile, t, n1, n2);
#endif
  base::epi_d(sp, tile, t, n1, n2);
}

double dot_float(const float* row, const float* v, int64_t n) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::dot_f(row, v, n);
  if (lv == 1) return avx2::dot_f(row, v, n);
#endif
  return base::dot_f(row, v, n);
}

double dot_double(const double* row, const double* v, int64_t n) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::dot_d(row, v, n);
  if (lv == 1) return avx2::dot_d(row, v, n);
#endif
  return base::dot_d(row, v, n);
}

void hadamard_float(float* dst, int64_t ld, const float* p, const float* q, int64_t ldpq,
                    int64_t rows, int64_t cols) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::had_f(dst, ld, p, q, ldpq, rows, cols);
  if (lv == 1) return avx2::had_f(dst, ld, p, q, ldpq, rows, cols);
#endif
  base::had_f(dst, ld, p, q, ldpq, rows, cols);
}

void hadamard_double(double* dst, int64_t ld, const double* p, const double* q, int64_t ldpq,
                     int64_t rows, int64_t cols) {
#if FK_MULTIVERSION
  const int lv = isa_level();
  if (lv == 2) return avx512::had_d(dst, ld, p, q, ldpq, rows, cols);
  if (lv == 1) return avx2::had_d(dst, ld, p, q, ldpq, rows, cols);
#endif
  base::had_d(dst, ld, p, q, ldpq, rows, cols);
}

}  // namespace fastkernels
