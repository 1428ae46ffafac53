//! The conventions every estimator follows (DESIGN.md, "Mathematics"). Written once, here.
//!
//! **LoRA layer** (PEFT): `y = W0 x + s B A x`, `A: [r, d_in]`, `B: [d_out, r]`. Per token:
//! `z = A x`, `g = dL/dy`, `h = dL/dz = s B^T g`; gradients `dL/dB = s g z^T`, `dL/dA = h x^T`.
//! g and h are read from zero "probe" leaves added to y and z (burn has no hooks).
//!
//! **Loss.** L is the *sum* over tokens of the per-token loss under the chosen labels (sampled,
//! empirical or enumerated), so g does not depend on how tokens are batched.
//!
//! **The matrix every estimator targets.** One F for diag, kfac and tri-kfac: the Fisher of
//! the source NLL with each loss-carrying position as one observation (KFAC-expand),
//!
//! `F = (1/N_tok) sum_n sum_{t in T_n} E_yhat[ vec(G_nt) vec(G_nt)^T ]`,
//! `G_nt = (dA_t, dB_t) = (h_t x_t^T, s g_t z_t^T)`,
//!
//! where `T_n` are the loss-carrying positions of sequence n, `N_tok = sum_n |T_n|`, and g, h
//! are the gradients of the sequence's summed loss under the labels `yhat` (so `G_nt` is
//! position t's share of the sequence's gradient). Positions without a loss (padding, prompt
//! tokens, a chat's user turns, each sequence's last position) are left out of every
//! estimator, through the same mask. The estimators differ only in how they approximate this
//! one matrix:
//! - diag: its exact diagonal, `F_A = sum (h_t^2)(x_t^2)^T / N_tok`,
//!   `F_B = s^2 sum (g_t^2)(z_t^2)^T / N_tok` (entry-wise squares, summed over tokens);
//! - kfac: its A-A and B-B blocks, each a Kronecker product of token averages (exact when the
//!   factors are uncorrelated over tokens, e.g. one token);
//! - tri-kfac: kfac plus the A-B block, factorised the same way.
//!
//! F equals the exact GGN (the type-2 Fisher of the softmax) where positions do not interact
//! through the adapted layers: a deep linear stack with one example per token, or one loss
//! token per sequence at position 0 (tests/curvature.rs checks both). In a transformer,
//! position t's output gradient also reaches earlier positions through attention; those
//! cross-position terms are left out (as in every KFAC for sequences). Summing squares of
//! whole-sequence gradients instead (the old diag) keeps them and is unbiased for the exact
//! GGN diagonal under Monte-Carlo labels, but has a relative s.d. of about `sqrt(2/(n_seq K))`
//! per entry whatever the sequence length, and under the empirical Fisher adds cross-position
//! products that grow with the sequence length; the per-token diagonal averages over tokens
//! and targets the same matrix as kfac.
//!
//! **Labels.** `mc` draws every position's label independently from the model's softmax at
//! that position (K draws per position, each pass weighted `1/K`): then `E[g_t] = 0` for
//! every t and the draws of different positions are uncorrelated. `empirical` uses the data's
//! next tokens; `exhaustive` enumerates every label (tests only).
//!
//! **Normalisation.** F is the per-token average over the `N_tok` source tokens that carry a
//! loss: every accumulated sum is divided by `N_tok` exactly once, in
//! [`super::Accumulator::finish`]. F therefore does not grow with the amount of source data.
//! With the target loss a per-token mean over `N_tgt` training tokens, the Bayesian posterior
//! after the source tokens and then the target tokens has its MAP at `lambda = N_src / N_tgt`,
//! with delta read as a prior precision per source token (see [`crate::posterior::posterior_lambda`]).
//!
//! **Vectorisation** is row-major, so `vec(D)^T (G kron X) vec(D) = <D, G D X>`.
//!
//! **Factors** (per adapter; `E_t` = average over loss tokens and draws):
//! - diag: `F_A = E_t[h_t^2 (x_t^2)^T]`, `F_B = s^2 E_t[g_t^2 (z_t^2)^T]` (entry-wise squares);
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
//! **B = 0.** With PEFT's init h = 0, so diag's `F_A`, kfac's `G_A` and tri-kfac's `G_AB`
//! vanish: only B is constrained and tri-kfac equals kfac. The offset init (`LoraInit::Offset`)
//! avoids this.
