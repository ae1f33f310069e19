//! What `webdiffusion info --model` prints: a block list and an estimate of the activation
//! memory a forward pass needs, computed from the architecture alone (no weights, no GPU).
//!
//! The estimate follows the forward pass of [`UNet`](super::UNet): the skip tensors the up
//! path will consume stay alive from their creation to their use, and each layer briefly
//! holds its input, its intermediates and its output. It counts f32 tensors and assumes
//! every intermediate of a layer is alive at once (the buffer pool can free some earlier),
//! so it errs high; attention never stores the Nq×Nk score matrix (the kernel is
//! flash-style), so attention costs scale with tokens × channels only.

use super::config::{TransformerSpec, UNetArch};

/// One line per block: its kind, channels, and layer counts.
pub fn block_list(arch: &UNetArch) -> Vec<String> {
    let mut v = Vec::new();
    let attn = |n_attn: usize, t: &[TransformerSpec]| {
        if let Some(t0) = t.first() {
            format!(
                ", {} transformer(s) (depth {}, {} heads × {}, cross {})",
                t.len(),
                t0.depth,
                t0.heads,
                t0.head_dim,
                t0.cross_attention_dim
            )
        } else if n_attn > 0 {
            format!(", {n_attn} attention(s)")
        } else {
            String::new()
        }
    };
    for (i, b) in arch.down_blocks.iter().enumerate() {
        v.push(format!(
            "down_blocks.{i}: {:?} {} → {} channels, {} resnet(s){}{}",
            b.kind,
            b.in_channels,
            b.out_channels,
            b.resnets.len(),
            attn(b.attentions.len(), &b.transformers),
            if b.downsample_padding.is_some() {
                ", downsample"
            } else {
                ""
            }
        ));
    }
    if let Some(m) = &arch.mid_block {
        v.push(format!(
            "mid_block: {:?} {} channels, {} resnet(s){}",
            m.kind,
            m.channels,
            m.resnets.len(),
            attn(m.attentions.len(), &m.transformers)
        ));
    }
    for (i, b) in arch.up_blocks.iter().enumerate() {
        v.push(format!(
            "up_blocks.{i}: {:?} → {} channels, {} resnet(s){}{}",
            b.kind,
            b.out_channels,
            b.resnets.len(),
            attn(b.attentions.len(), &b.transformers),
            if b.upsample { ", upsample" } else { "" }
        ));
    }
    v
}

/// Estimated peak bytes of activations for one forward pass of a batch of `batch` samples
/// of `height × width` (with `tokens` encoder tokens for cross-attention); see the module
/// docs. Sizes that are not multiples of the downsampling factor are rounded up.
pub fn peak_activation_bytes(
    arch: &UNetArch,
    batch: usize,
    height: usize,
    width: usize,
    tokens: usize,
) -> u64 {
    let mut hw = (height as u64) * (width as u64);
    let (mut h, mut w) = (height as u64, width as u64);
    let mut skips: Vec<u64> = Vec::new();
    let mut peak = 0u64;
    let mut live = |skips: &[u64], work: u64| {
        let total = skips.iter().sum::<u64>() + work;
        peak = peak.max(total);
    };
    let c0 = arch.block_out_channels.first().copied().unwrap_or(0) as u64;
    let resnet = |cin: u64, cout: u64, hw: u64| (2 * cin + 3 * cout) * hw;
    let attention = |c: u64, inner: u64, hw: u64| (3 * c + 4 * inner) * hw;
    let transformer = |t: &TransformerSpec, hw: u64| {
        let (c, inner) = (t.channels as u64, (t.heads * t.head_dim) as u64);
        // x, norm, two transposes, block: norm, q/k/v, attention out, residual, GEGLU in
        // (8·inner), GEGLU out (4·inner); plus k and v of the encoder tokens.
        (3 * c + 20 * inner) * hw + 2 * inner * tokens as u64
    };
    let attn_cost =
        |i: usize, spatial: &[super::config::AttentionSpec], cross: &[TransformerSpec], hw: u64| {
            if let Some(t) = cross.get(i) {
                transformer(t, hw)
            } else if let Some(a) = spatial.get(i) {
                attention(a.channels as u64, (a.heads * a.head_dim) as u64, hw)
            } else {
                0
            }
        };
    live(&skips, (arch.in_channels as u64 + c0) * hw);
    skips.push(c0 * hw);
    for b in &arch.down_blocks {
        for (j, r) in b.resnets.iter().enumerate() {
            let (ci, co) = (r.in_channels as u64, r.out_channels as u64);
            live(&skips, resnet(ci, co, hw));
            live(&skips, attn_cost(j, &b.attentions, &b.transformers, hw));
            skips.push(co * hw);
        }
        if b.downsample_padding.is_some() {
            h = h.div_ceil(2);
            w = w.div_ceil(2);
            let c = b.out_channels as u64;
            live(&skips, c * hw + c * h * w);
            hw = h * w;
            skips.push(c * hw);
        }
    }
    if let Some(m) = &arch.mid_block {
        for (j, r) in m.resnets.iter().enumerate() {
            let c = r.out_channels as u64;
            if j > 0 {
                live(&skips, attn_cost(j - 1, &m.attentions, &m.transformers, hw));
            }
            live(&skips, resnet(c, c, hw));
        }
    }
    for b in &arch.up_blocks {
        for (j, r) in b.resnets.iter().enumerate() {
            skips.pop();
            let (ci, co) = (r.in_channels as u64, r.out_channels as u64);
            // The concatenation (ci channels) plus the resnet's own tensors.
            live(&skips, ci * hw + resnet(ci, co, hw));
            live(&skips, attn_cost(j, &b.attentions, &b.transformers, hw));
        }
        if b.upsample {
            let c = b.out_channels as u64;
            live(&skips, c * hw * 9);
            h *= 2;
            w *= 2;
            hw = h * w;
        }
    }
    live(&skips, (3 * c0 + arch.out_channels as u64) * hw);
    peak * 4 * batch as u64
}
