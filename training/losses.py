"""Training losses: pure functions, tensors in, scalar tensor out (reference sections 2 and 4).

- `lidiff_loss`: the teacher's noise loss with LiDiff's mean/std regulariser.
- `noise_mse`: the teaching assistants' loss (Distillation-DPO Eq. 20).
- `chamfer_squared`: the refinement net's loss (pytorch3d `chamfer_distance` defaults).
- `diffusion_dpo_loss`: Diffusion-DPO (Wallace et al. 2023; Distillation-DPO Eq. 10), the
  teacher fine-tuning baseline of Table 4.
- `student_surrogate`, `score_distill_surrogate`: scalars whose autograd gradient w.r.t. the
  student's parameters is the Distillation-DPO student gradient (Eq. 18) or the one-TA score
  distillation gradient (Table 6). Their values mean nothing; only their gradients do.
- `released_code_student_loss`: the released code's student loss, kept only to prove in a test
  that its gradient is identically zero (reference section 4). Never train with it.

Sign convention (one place for the whole module). eps is a noise prediction and the diffused
sample is x_t = x_0 + sigma_t n, so the score is s(x_t) = -eps(x_t) / sigma_t. For a one-step
generator G_eta with fake (student) density p_fake and real (teacher) density p_real,
DMD's d KL(p_fake || p_real) / d eta = E[ -(s_real - s_fake)(x_t) . dG/d eta ]
= E[ (eps_real - eps_fake)(x_t) / sigma_t . dG/d eta ].
With g = eps_teacher - eps_ta, gradient *descent* on the surrogate sum(sg(g) * G) therefore
moves G along -g, i.e. towards the teacher's data and away from the assistant's: it lowers the
KL to the teacher. 1/sigma_t and the expectation's normalisation are folded into omega.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHAMFER_BLOCK = 1 << 24  # distance-matrix entries per block: 64 MiB of float32


def lidiff_loss(eps_pred: Tensor, eps: Tensor, reg_weight: float = 5.0) -> Tensor:
    """LiDiff's loss: MSE(eps_pred, eps) + reg_weight [mean(eps_pred)^2 + (std(eps_pred) - 1)^2].

    Mean and std run over the whole batch tensor, std unbiased (torch's default, as the reference);
    the regulariser pulls the prediction's statistics towards N(0, 1) (reference section 2).
    """
    reg = eps_pred.mean() ** 2 + (eps_pred.std() - 1.0) ** 2
    return F.mse_loss(eps_pred, eps) + reg_weight * reg


def noise_mse(eps_pred: Tensor, eps: Tensor) -> Tensor:
    """A teaching assistant's loss, plain MSE to the drawn noise (Eq. 20; no regulariser)."""
    return F.mse_loss(eps_pred, eps)


@torch.no_grad()
def _nearest(a: Tensor, b: Tensor, block: int, kdtree: bool | None = None) -> tuple[Tensor, Tensor]:
    """Indices of each a point's nearest b point and each b point's nearest a point, exactly.

    On the CPU a k-d tree finds them (float64); on a GPU the blocks below do.

    cdist without the matmul shortcut: ||a||^2 + ||b||^2 - 2ab cancels catastrophically 50 m from
    the origin (float32 error ~1e-3 m^2 against cm-scale distances). One pass over row blocks
    gives both directions, keeping at most `block` distances alive; no autograd graph is built.
    """
    if kdtree if kdtree is not None else a.device.type == "cpu":  # O(n log n), not the O(n m) blocks
        from scipy.spatial import cKDTree

        an, bn = a.double().numpy(), b.double().numpy()
        idx_ab = torch.from_numpy(cKDTree(bn).query(an, workers=-1)[1]).long()
        idx_ba = torch.from_numpy(cKDTree(an).query(bn, workers=-1)[1]).long()
        return idx_ab, idx_ba
    rows = max(1, block // max(1, len(b)))
    idx_ab = torch.empty(len(a), dtype=torch.long, device=a.device)
    best_ba = torch.full((len(b),), float("inf"), dtype=a.dtype, device=a.device)
    idx_ba = torch.zeros(len(b), dtype=torch.long, device=a.device)
    for start in range(0, len(a), rows):
        d = torch.cdist(a[start:start + rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        idx_ab[start:start + rows] = d.argmin(dim=1)
        col_min, col_idx = d.min(dim=0)
        better = col_min < best_ba
        best_ba = torch.where(better, col_min, best_ba)
        idx_ba = torch.where(better, col_idx + start, idx_ba)
    return idx_ab, idx_ba


def chamfer_squared(pred: Tensor, gt: Tensor, block: int = CHAMFER_BLOCK, kdtree: bool | None = None) -> Tensor:
    """pytorch3d `chamfer_distance` with its defaults, for (B, N, 3) and (B, M, 3) clouds.

    Squared Euclidean nearest-neighbour distance, averaged over the points of each direction,
    the two directions summed, averaged over the batch (the refine stage's loss, reference
    section 4). The neighbours are found without grad; the distances are recomputed from the
    gathered points, so the gradient is the min's (sub)gradient, as pytorch3d's knn gives it.
    """
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[0] != gt.shape[0] or pred.shape[2] != gt.shape[2]:
        raise ValueError(f"need (B, N, D) and (B, M, D) clouds, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    total = pred.new_zeros(())
    for a, b in zip(pred, gt):
        idx_ab, idx_ba = _nearest(a.detach(), b.detach(), block, kdtree)
        # index_select, not a[idx]: its backward (index_add_) is deterministic on CPU, where advanced
        # indexing's (index_put_ accumulate) adds duplicates in thread order under load.
        total = (total + ((a - b.index_select(0, idx_ab)) ** 2).sum(-1).mean()
                 + ((b - a.index_select(0, idx_ba)) ** 2).sum(-1).mean())
    return total / pred.shape[0]


def diffusion_dpo_loss(model_err_w: Tensor, model_err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor,
                       beta: float = 5000.0) -> Tensor:
    """Diffusion-DPO (Wallace et al. 2023; Distillation-DPO Eq. 10), the batch mean of

        -log sigmoid( -beta/2 [ (e_w - e_w^ref) - (e_l - e_l^ref) ] ),

    where e = per-sample mean of ||eps - eps_model(x_t, t)||^2 (shape (B,)), w the preferred and l
    the rejected sample at the same t. Folded constants: T * omega(lambda_t) is taken constant
    and absorbed into beta (beta = 5000 for SD1.5 in Diffusion-DPO); the 1/2 is the Gaussian
    log-likelihood's, kept explicit as in Diffusion-DPO's released training script. The
    reference model is frozen, so its errors are detached. Equal errors give log 2.
    """
    inside = -0.5 * beta * ((model_err_w - model_err_l) - (ref_err_w.detach() - ref_err_l.detach()))
    return -F.logsigmoid(inside).mean()


def student_surrogate(sample_w: Tensor, sample_l: Tensor, g_w: Tensor, g_l: Tensor,
                      omega: float | None = None, loser_weight: float = 1.0) -> Tensor:
    """Distillation-DPO student surrogate (Eq. 18); its gradient w.r.t. the student's eta is

        (1/omega) [ g_w . dG_w/d eta  -  c g_l . dG_l/d eta ],   c = loser_weight (Eq. 18: 1),

    G_w, G_l the student's one-step samples (with graph), g = eps_teacher(x_t) - eps_ta(x_t) at
    x_t = G + sigma_t n (shared t and n, computed without grad; ta_win for w, ta_lose for l).
    Descent moves the winner towards the teacher and the loser away from it (module docstring):
    d/d eta of KL(p_w || p_teacher) - KL(p_l || p_teacher), DPO's preference direction.

    SIGN NOTE: DESIGN.md writes Eq. 18 as (1/omega)[ g_l . dG_l - g_w . dG_w ]. That is the same
    expression when g denotes the *score* difference s_teacher - s_ta = -(eps_teacher - eps_ta) /
    sigma_t; with g the noise-prediction difference (as passed here) it would push the winner away
    from the teacher. The released code's term order (winner minus loser) agrees with this one.

    omega defaults to sample_w.numel(): the released code averages each term over all B*N*3
    elements, so the gradient has that scale. loser_weight < 1 weakens the push on the loser
    (distill.loser_weight; 0 leaves the winner's pull alone, score distillation with the winner's TA).
    """
    if sample_w.shape != sample_l.shape or g_w.shape != sample_w.shape or g_l.shape != sample_l.shape:
        raise ValueError("samples and score differences must all have the same shape")
    omega = float(sample_w.numel()) if omega is None else float(omega)
    return ((g_w.detach() * sample_w).sum() - loser_weight * (g_l.detach() * sample_l).sum()) / omega


def dmd_normalise(g: Tensor, sample: Tensor, x_t: Tensor, eps_teacher: Tensor, sigma: Tensor) -> Tensor:
    """g = eps_teacher - eps_ta re-weighted as DMD does (Yin et al. 2024, Eq. 7-8 and its weighting):

        g' = (x0_fake - x0_real) / mean|G - x0_real|,   x0 = x_t - sigma_t eps (the local noise, alpha 1),

    so x0_fake - x0_real = sigma_t g. In eps units (g as it comes) a step at small t weighs
    1/sigma_t more than its effect on the clean cloud: |g| spiked to ~500 at the smallest t.
    In x0 units, divided per sample by the distance from G to the teacher's clean estimate, every t
    and every scene contributes O(1). sigma (B,) per sample; sample, x_t, eps_teacher (B, N, 3).
    """
    s = sigma.to(g.dtype).reshape(-1, 1, 1)
    x0_real = x_t - s * eps_teacher
    scale = (sample.detach() - x0_real).abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    return s * g / scale


def score_distill_surrogate(sample: Tensor, g: Tensor, omega: float | None = None) -> Tensor:
    """One-TA score distillation (Table 6 baseline): gradient (1/omega) g . dG/d eta, g as above.

    Same sign and omega convention as `student_surrogate` with no loser: descent pulls G towards
    the teacher (DMD / ScoreLiDAR's distillation term with a working gradient).
    """
    if g.shape != sample.shape:
        raise ValueError(f"g {tuple(g.shape)} and sample {tuple(sample.shape)} differ in shape")
    omega = float(sample.numel()) if omega is None else float(omega)
    return (g.detach() * sample).sum() / omega


def released_code_student_loss(eps_teacher_w: Tensor, eps_ta_win: Tensor, x_wt: Tensor, x_w: Tensor,
                               eps_teacher_l: Tensor, eps_ta_lose: Tensor, x_lt: Tensor, x_l: Tensor) -> Tensor:
    """BUGGY REFERENCE FORM, do not train with it: the released DistillationDPO.py student loss

        mean((eps_T^w - eps_B) * (x_wt - x_w)) - mean((eps_T^l - eps_W) * (x_lt - x_l)).

    x_t - x_0 = sigma_t n does not depend on the student (the G inside x_t cancels exactly) and
    the eps terms come from no-grad calls, so the gradient w.r.t. the student is identically
    zero (reference section 4): the released student never learns. Kept to demonstrate that.
    """
    winner = ((eps_teacher_w - eps_ta_win) * (x_wt - x_w)).mean()
    loser = ((eps_teacher_l - eps_ta_lose) * (x_lt - x_l)).mean()
    return winner - loser
