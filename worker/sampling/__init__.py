"""Noise schedules, samplers and the KSampler procedure (pure math over a denoiser function)."""
