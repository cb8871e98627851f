"""hoa's high-noise guidance (``--guidance-high``, hoa.json ``guidance_high``) in a diffusers pipeline.

diffusers' StableDiffusionPipeline guides every step at one ``guidance_scale`` g: u + g (c - u). hoa guides the
steps at timestep >= ``from_timestep`` at ``scale`` instead. ``guide_high_noise`` wraps the pipeline's U-Net so
that the pipeline's own formula gives that: for a step guided at s it returns the unconditional half as
u' = c - (s - 1) / (g - 1) (c - u), so u' + g (c - u') = c + (s - 1) (c - u) = u + s (c - u).
"""

import torch


def guide_high_noise(pipe, guidance, scale, from_timestep):
    """Make ``pipe(..., guidance_scale=guidance)`` guide at ``scale`` where t >= ``from_timestep``."""
    if guidance <= 1:
        raise ValueError("the pipeline must run guided (guidance_scale > 1) for its U-Net calls to have two halves")
    forward = pipe.unet.forward

    def guided(sample, timestep, *args, **kwargs):
        out = forward(sample, timestep, *args, **kwargs)
        pred = out[0] if isinstance(out, tuple) else out.sample
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if t >= from_timestep:
            u, c = pred.chunk(2)
            pred = torch.cat([c - (scale - 1) / (guidance - 1) * (c - u), c])
        return (pred,) if isinstance(out, tuple) else type(out)(sample=pred)

    pipe.unet.forward = guided
    return pipe
