// The compiled kernels of the torch backend (CPU). native.py builds this file on first use and
// falls back to plain torch where it cannot; every kernel here has a torch twin it must equal.
//
// segment_add: the scatter of the sparse convolutions, out.index_add_(0, rows, src), with the
//   pairs pre-sorted by output row (csr_plan). index_add_ accumulates pair by pair and its
//   bfloat16 path converts element by element; here each thread owns a range of output rows,
//   reads each row once, sums its pairs in float32 and writes it once. For float32 the sum starts
//   from out[o] and adds the pairs in their original order, exactly as index_add_ does, so results
//   are bit-identical.
// bias_act_: x = relu(x + bias + other) in one pass, in place: the epilogue of a folded
//   convolution and the end of a residual block, which torch would run as two or three passes.
// submanifold_pairs: one offset of a submanifold kernel map and its mirror, as coords.py's
//   searchsorted path builds them, in one parallel binary-search pass and two linear passes.
// csr_plan: a stable counting sort of output rows: (order, ptr) for segment_add.
// nearest_lattice: the exact 1-NN of conditioning.nearest_voxel, one query per thread iteration,
//   searching rings of lattice cells in a dense grid of the candidates until no unvisited cell
//   can hold a closer one. An empty result means "not applicable here" (candidates off the
//   lattice, two in one cell, or a grid above max_cells): the caller takes its torch path.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

template <typename T>
void segment_add_impl(T* out, const T* src, const int64_t* order, const int64_t* ptr,
                      int64_t n_out, int64_t channels) {
  at::parallel_for(0, n_out, 512, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(channels);
    for (int64_t o = lo; o < hi; ++o) {
      const int64_t begin = ptr[o], end = ptr[o + 1];
      if (begin == end) continue;
      T* dst = out + o * channels;
      for (int64_t c = 0; c < channels; ++c) acc[c] = static_cast<float>(dst[c]);
      for (int64_t p = begin; p < end; ++p) {
        const T* row = src + order[p] * channels;
        for (int64_t c = 0; c < channels; ++c) acc[c] += static_cast<float>(row[c]);
      }
      for (int64_t c = 0; c < channels; ++c) dst[c] = static_cast<T>(acc[c]);
    }
  });
}

void segment_add(torch::Tensor out, torch::Tensor src, torch::Tensor order, torch::Tensor ptr) {
  TORCH_CHECK(out.device().is_cpu() && src.device().is_cpu(), "segment_add: CPU tensors only");
  TORCH_CHECK(out.dim() == 2 && src.dim() == 2 && out.size(1) == src.size(1), "segment_add: (n, C) tensors");
  TORCH_CHECK(out.is_contiguous() && src.is_contiguous() && order.is_contiguous() && ptr.is_contiguous(),
              "segment_add: contiguous tensors only");
  TORCH_CHECK(out.scalar_type() == src.scalar_type(), "segment_add: out and src dtypes differ");
  TORCH_CHECK(order.scalar_type() == at::kLong && ptr.scalar_type() == at::kLong, "segment_add: int64 plan");
  TORCH_CHECK(ptr.numel() == out.size(0) + 1 && order.numel() == src.size(0), "segment_add: plan does not fit");
  const int64_t n_out = out.size(0), channels = out.size(1);
  if (out.scalar_type() == at::kFloat) {
    segment_add_impl(out.data_ptr<float>(), src.data_ptr<float>(), order.data_ptr<int64_t>(),
                     ptr.data_ptr<int64_t>(), n_out, channels);
  } else if (out.scalar_type() == at::kBFloat16) {
    segment_add_impl(out.data_ptr<c10::BFloat16>(), src.data_ptr<c10::BFloat16>(),
                     order.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), n_out, channels);
  } else {
    TORCH_CHECK(false, "segment_add: float32 or bfloat16 only, got ", out.scalar_type());
  }
}

std::vector<torch::Tensor> csr_plan(torch::Tensor rows, int64_t n_out) {
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kLong && rows.dim() == 1, "csr_plan: int64 rows");
  rows = rows.contiguous();
  const int64_t n = rows.numel();
  const int64_t* r = rows.data_ptr<int64_t>();
  auto ptr = torch::zeros({n_out + 1}, rows.options());
  auto order = torch::empty({n}, rows.options());
  int64_t* p = ptr.data_ptr<int64_t>();
  int64_t* o = order.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK(r[j] >= 0 && r[j] < n_out, "csr_plan: row ", r[j], " outside [0, ", n_out, ")");
    ++p[r[j] + 1];
  }
  for (int64_t i = 0; i < n_out; ++i) p[i + 1] += p[i];
  std::vector<int64_t> fill(p, p + n_out);
  for (int64_t j = 0; j < n; ++j) o[fill[r[j]]++] = j;
  return {order, ptr};
}

template <typename T>
void bias_act_impl(T* x, const T* bias, const T* other, int64_t rows, int64_t channels, bool relu) {
  at::parallel_for(0, rows, 2048, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      T* row = x + r * channels;
      const T* add = other ? other + r * channels : nullptr;
      for (int64_t c = 0; c < channels; ++c) {
        float v = static_cast<float>(row[c]);
        if (bias) v += static_cast<float>(bias[c]);
        if (add) v += static_cast<float>(add[c]);
        row[c] = static_cast<T>(relu && v < 0.f ? 0.f : v);
      }
    }
  });
}

// x = act(x + bias + other) in place, one pass (bias: (C,) or empty, other: like x or empty).
void bias_act_(torch::Tensor x, torch::Tensor bias, torch::Tensor other, bool relu) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "bias_act_: contiguous (n, C) CPU tensor");
  const bool has_bias = bias.numel() > 0, has_other = other.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.is_contiguous() && bias.numel() == x.size(1) && bias.scalar_type() == x.scalar_type()),
              "bias_act_: bias must be (C,) of x's dtype");
  TORCH_CHECK(!has_other || (other.is_contiguous() && other.sizes() == x.sizes() && other.scalar_type() == x.scalar_type()),
              "bias_act_: other must be like x");
  if (x.scalar_type() == at::kFloat) {
    bias_act_impl(x.data_ptr<float>(), has_bias ? bias.data_ptr<float>() : nullptr,
                  has_other ? other.data_ptr<float>() : nullptr, x.size(0), x.size(1), relu);
  } else if (x.scalar_type() == at::kBFloat16) {
    bias_act_impl(x.data_ptr<c10::BFloat16>(), has_bias ? bias.data_ptr<c10::BFloat16>() : nullptr,
                  has_other ? other.data_ptr<c10::BFloat16>() : nullptr, x.size(0), x.size(1), relu);
  } else {
    TORCH_CHECK(false, "bias_act_: float32 or bfloat16 only, got ", x.scalar_type());
  }
}

// The pairs of one submanifold offset and of its mirror, both in output-row order: for every row
// o with a voxel at key[o] + delta, the pair (in = that voxel, out = o); the mirror slice holds
// the same pairs reversed, (in = o, out = that voxel), sorted by its output row.
std::vector<torch::Tensor> submanifold_pairs(torch::Tensor keys, torch::Tensor sorted_keys, torch::Tensor sorted_rows,
                                             int64_t delta) {
  TORCH_CHECK(keys.scalar_type() == at::kLong && sorted_keys.scalar_type() == at::kLong &&
              sorted_rows.scalar_type() == at::kLong, "submanifold_pairs: int64 tensors");
  keys = keys.contiguous();
  sorted_keys = sorted_keys.contiguous();
  sorted_rows = sorted_rows.contiguous();
  const int64_t n = keys.numel();
  TORCH_CHECK(sorted_keys.numel() == n && sorted_rows.numel() == n, "submanifold_pairs: sizes differ");
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* sk = sorted_keys.data_ptr<int64_t>();
  const int64_t* sr = sorted_rows.data_ptr<int64_t>();
  std::vector<int64_t> found(n, -1);
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t o = lo; o < hi; ++o) {
      const int64_t want = k[o] + delta;
      const int64_t* pos = std::lower_bound(sk, sk + n, want);
      if (pos != sk + n && *pos == want) found[o] = sr[pos - sk];
    }
  });
  int64_t hits = 0;
  for (int64_t o = 0; o < n; ++o) hits += found[o] >= 0;
  auto opts = keys.options();
  auto in_rows = torch::empty({hits}, opts), out_rows = torch::empty({hits}, opts);
  auto mirror_in = torch::empty({hits}, opts), mirror_out = torch::empty({hits}, opts);
  int64_t *ir = in_rows.data_ptr<int64_t>(), *orow = out_rows.data_ptr<int64_t>();
  int64_t *mi = mirror_in.data_ptr<int64_t>(), *mo = mirror_out.data_ptr<int64_t>();
  std::vector<int64_t> back(n, -1);  // voxel i -> the row o that found it (one per offset)
  for (int64_t o = 0, h = 0; o < n; ++o) {
    if (found[o] < 0) continue;
    ir[h] = found[o], orow[h] = o, ++h;
    back[found[o]] = o;
  }
  for (int64_t i = 0, h = 0; i < n; ++i) {
    if (back[i] < 0) continue;
    mi[h] = back[i], mo[h] = i, ++h;
  }
  return {in_rows, out_rows, mirror_in, mirror_out};
}

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

torch::Tensor nearest_lattice(torch::Tensor query, torch::Tensor cand, torch::Tensor rank, int64_t lattice,
                              int64_t max_cells) {
  TORCH_CHECK(query.scalar_type() == at::kLong && cand.scalar_type() == at::kLong && rank.scalar_type() == at::kLong,
              "nearest_lattice: int64 tensors");
  TORCH_CHECK(query.dim() == 2 && query.size(1) == 4 && cand.dim() == 2 && cand.size(1) == 4 && cand.size(0) > 0,
              "nearest_lattice: (n, 4) queries and (m > 0, 4) candidates");
  query = query.contiguous();
  cand = cand.contiguous();
  rank = rank.contiguous();
  const int64_t n = query.size(0), m = cand.size(0), L = lattice;
  const int64_t* q = query.data_ptr<int64_t>();
  const int64_t* c = cand.data_ptr<int64_t>();
  const int64_t* rk = rank.data_ptr<int64_t>();
  // Dense grid of candidate cells (batch, x / L, y / L, z / L) -> candidate row.
  int64_t lo[4], hi[4];
  for (int a = 0; a < 4; ++a) lo[a] = std::numeric_limits<int64_t>::max(), hi[a] = std::numeric_limits<int64_t>::min();
  for (int64_t i = 0; i < m; ++i) {
    for (int a = 0; a < 4; ++a) {
      const int64_t v = a == 0 ? c[4 * i] : floor_div(c[4 * i + a], L);
      if (a > 0 && v * L != c[4 * i + a]) return torch::empty({0}, query.options());  // off the lattice
      lo[a] = std::min(lo[a], v), hi[a] = std::max(hi[a], v);
    }
  }
  int64_t ext[4], cells = 1;
  for (int a = 0; a < 4; ++a) {
    ext[a] = hi[a] - lo[a] + 1;
    cells = cells > max_cells / ext[a] ? max_cells + 1 : cells * ext[a];
  }
  if (cells > max_cells) return torch::empty({0}, query.options());  // too spread: the caller falls back
  auto result = torch::full({n}, -1, query.options());
  std::vector<int64_t> grid(cells, -1);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t key = (((c[4 * i] - lo[0]) * ext[1] + (c[4 * i + 1] / L - lo[1])) * ext[2] +
                         (c[4 * i + 2] / L - lo[2])) * ext[3] + (c[4 * i + 3] / L - lo[3]);
    if (grid[key] >= 0) return torch::empty({0}, query.options());  // two candidates in one cell
    grid[key] = i;
  }
  int64_t* out = result.data_ptr<int64_t>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t b = q[4 * j];
      if (b < lo[0] || b > hi[0]) continue;  // no candidates of this batch element: left at -1
      const int64_t* p = q + 4 * j + 1;
      int64_t base[3], lo3[3], hi3[3];
      int64_t reach = 0;  // rings beyond this cover no grid cell
      for (int a = 0; a < 3; ++a) {
        base[a] = floor_div(p[a] + L / 2, L);
        lo3[a] = lo[a + 1], hi3[a] = hi[a + 1];
        reach = std::max({reach, base[a] - lo3[a], hi3[a] - base[a]});
      }
      const int64_t* slab = grid.data() + (b - lo[0]) * ext[1] * ext[2] * ext[3];
      int64_t best = -1, best_d2 = std::numeric_limits<int64_t>::max();
      auto visit = [&](int64_t x, int64_t y, int64_t z) {
        const int64_t i = slab[((x - lo3[0]) * ext[2] + (y - lo3[1])) * ext[3] + (z - lo3[2])];
        if (i < 0) return;
        const int64_t dx = p[0] - c[4 * i + 1], dy = p[1] - c[4 * i + 2], dz = p[2] - c[4 * i + 3];
        const int64_t d2 = dx * dx + dy * dy + dz * dz;
        if (d2 < best_d2 || (d2 == best_d2 && rk[i] < rk[best])) best = i, best_d2 = d2;
      };
      for (int64_t r = 0; r <= reach; ++r) {
        const int64_t x0 = std::max(base[0] - r, lo3[0]), x1 = std::min(base[0] + r, hi3[0]);
        const int64_t y0 = std::max(base[1] - r, lo3[1]), y1 = std::min(base[1] + r, hi3[1]);
        const int64_t z0 = std::max(base[2] - r, lo3[2]), z1 = std::min(base[2] + r, hi3[2]);
        for (int64_t x = x0; x <= x1; ++x) {
          for (int64_t y = y0; y <= y1; ++y) {
            if (x == base[0] - r || x == base[0] + r || y == base[1] - r || y == base[1] + r) {
              for (int64_t z = z0; z <= z1; ++z) visit(x, y, z);  // a face of the ring: whole column
            } else {  // inside: only the two z caps
              if (base[2] - r >= lo3[2] && base[2] - r <= hi3[2]) visit(x, y, base[2] - r);
              if (r > 0 && base[2] + r >= lo3[2] && base[2] + r <= hi3[2]) visit(x, y, base[2] + r);
            }
          }
        }
        // Unvisited cells are at least (r + 1/2) L away along some axis.
        if (best >= 0 && 4 * best_d2 < (2 * r + 1) * (2 * r + 1) * L * L) break;
      }
      out[j] = best;
    }
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("segment_add", &segment_add, "out[o] += sum of src[order[ptr[o]:ptr[o+1]]] (float32/bfloat16)");
  m.def("bias_act_", &bias_act_, "x = relu?(x + bias + other) in place (float32/bfloat16)");
  m.def("submanifold_pairs", &submanifold_pairs, "(in, out, mirror in, mirror out) rows of one offset");
  m.def("csr_plan", &csr_plan, "(order, ptr) of rows: a stable counting sort by row");
  m.def("nearest_lattice", &nearest_lattice, "exact 1-NN of integer queries among lattice candidates");
}
