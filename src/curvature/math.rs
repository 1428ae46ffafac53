//! The conventions every estimator follows (DESIGN.md, "Mathematics"). Written once, here.
//!
//! **LoRA layer** (PEFT): `y = W0 x + s B A x`, `A: [r, d_in]`, `B: [d_out, r]`. Per token:
//! `z = A x`, `g = dL/dy`, `h = dL/dz = s B^T g`; gradients `dL/dB = s g z^T`, `dL/dA = h x^T`.
//! g and h are read from zero "probe" leaves added to y and z (burn has no hooks).
//!
//! **Loss.** L is the *sum* over tokens of the per-token loss under the chosen labels (sampled,
//! empirical or enumerated), so g does not depend on how tokens are batched.
//!
//! **Normalisation.** F is the per-token average over the `N_tok` source tokens that carry a
//! loss (padding and positions without a label excluded): every accumulated sum is divided by
//! `N_tok` exactly once, in [`super::Accumulator::finish`]. Multiple Monte-Carlo draws are
//! averaged (each pass is weighted `1/K`). F therefore does not grow with the amount of source
//! data, and `lambda = N_tok` recovers the Bayesian posterior.
//!
//! **Vectorisation** is row-major, so `vec(D)^T (G kron X) vec(D) = <D, G D X>`.
//!
//! **Which tokens.** The Kronecker factors average over loss-carrying positions (x, z, g and h
//! of other positions are masked out): for plain text that only drops each sequence's last
//! position, where g is zero anyway; for prompt/completion data the prompt positions' share of
//! the gradient is left out, a documented approximation. The diagonal uses the exact
//! per-sequence gradient `dB_n = s sum_t g_t z_t^T`, `dA_n = sum_t h_t x_t^T` over all positions.
//!
//! **Factors** (per adapter; `E_t` = average over loss tokens and draws):
//! - diag: `F_A = sum_n E[dA_n^2] / N_tok`, `F_B = sum_n E[dB_n^2] / N_tok` (element-wise);
//! - kfac: `X_A = E_t[x x^T]` `[d_in, d_in]`, `G_A = E_t[h h^T]` `[r, r]`,
//!   `X_B = E_t[z z^T]` `[r, r]`, `G_B = s^2 E_t[g g^T]` `[d_out, d_out]`;
//!   quadratic form `<dA, G_A dA X_A> + <dB, G_B dB X_B>`;
//! - tri-kfac: kfac plus `G_AB = s E_t[h g^T]` `[r, d_out]`, `X_AB = E_t[x z^T]` `[d_in, r]`,
//!   adding `2 <dA, G_AB dB X_AB^T>`. All blocks come from the same tokens and labels, which
//!   makes the joint matrix a Gram matrix and hence PSD.
//!
//! **File names** in `curvature.safetensors`, `{m}` the HF module path:
//! diag `{m}.lora_A.diag`, `{m}.lora_B.diag`; kfac `{m}.lora_A.X`, `{m}.lora_A.G`,
//! `{m}.lora_B.X`, `{m}.lora_B.G`; tri-kfac adds `{m}.cross.X`, `{m}.cross.G`.
//!
//! **B = 0.** With PEFT's init h = 0, so `G_A` and `G_AB` vanish: only B is constrained and
//! tri-kfac equals kfac. The offset init (`LoraInit::Offset`) avoids this.
