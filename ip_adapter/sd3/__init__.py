"""SD3.5 (MMDiT) family: the InstantX SD3.5-Large IP-Adapter.

Unlike the UNet adapters, its image projection is conditioned on the timestep
(a Perceiver resampler with adaptive LayerNorms), so the image prompt carries
SigLIP features and the tokens are made once per sampling step. Every joint
block then adds `weight * Attn(norm_q(Q_img), [norm_k(K_img); norm_ip_k(K_ip)],
[V_img; V_ip])` to the image stream's attention output, before the block's
output projection (diffusers' `SD3IPAdapterJointAttnProcessor2_0`).

Modules: `format` (keys, shapes, spec), `resampler` (the time-conditioned
projection), `model` (the loaded adapter), `attention` (the per-block math),
`patch` (the block patch objects that ComfyUI calls).
"""
