"""ComfyUI's samplers over a denoiser `model(x, sigma) -> denoised x0`, in sigma (variance-exploding) space.

Each sampler is `sampler(model, x, sigmas, seed, on_step) -> x`: `sigmas` is the schedule as Python floats
(float32 values, as ComfyUI's schedules are), `seed` the KSampler seed (it seeds the noise the stochastic
samplers add, as ComfyUI seeds it: see worker.sampling.noise), and `on_step(i + 1, steps)` runs after every
step (the job's progress and cancel hook). Scalar coefficients are computed on the host from the Python
floats, so the loops never wait on the device.

Written here rather than imported: the update rules are a few lines each, and the package that holds them
(k-diffusion) pulls in training dependencies a worker image should not carry. They follow ComfyUI's
versions (comfy/k_diffusion/sampling.py, comfy/extra_samplers/uni_pc.py, comfy/samplers.py) with its
defaults: eta = 1, s_noise = 1, s_churn = 0, r = 1/2 for dpmpp_sde, the midpoint rule for dpmpp_2m_sde,
order 4 for lms, order up to 3 for uni_pc. The SDE samplers are written, as ComfyUI's, for any model type
(`flow`: alpha_t = 1 - sigma instead of 1); the other flow-model versions are in flow_samplers.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from worker.sampling.noise import BrownianNoise, StepNoise

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]
Sampler = Callable[[Denoiser, torch.Tensor, list[float], int, StepCallback], torch.Tensor]

# ComfyUI schedules one step more for these and drops the second-to-last sigma (KSampler.calculate_sigmas):
# their last real step then jumps from a lower sigma straight to 0.
DISCARD_PENULTIMATE_SIGMA = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})

# For these ComfyUI re-noises the kept region of a noise mask with its own noise (a CPU generator seeded
# with seed + 1) instead of the initial noise (inpaint_options {"random": True}); only "ddim" does this.
RANDOM_INPAINT_NOISE = frozenset({"ddim"})


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise of size sigma_up."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _steps(sigmas: list[float]) -> int:
    return len(sigmas) - 1


# --- first order ---------------------------------------------------------------------------------------


def euler(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    steps = _steps(sigmas)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma)
        on_step(i + 1, steps)
    return x


def euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        if sigma_down == 0:
            x = denoised
        else:
            d = (x - denoised) / sigma
            x = x + d * (sigma_down - sigma) + noise(sigma, sigma_next) * sigma_up
        on_step(i + 1, steps)
    return x


def lcm(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """Latent consistency: jump to the denoised estimate, then re-noise it to the next sigma."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = model(x, sigma)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_next
        on_step(i + 1, steps)
    return x


# --- second order, two model calls per step ------------------------------------------------------------


def heun(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """Karras et al. (2022), algorithm 2 without churn; the step to sigma 0 is an Euler step."""
    steps = _steps(sigmas)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        on_step(i + 1, steps)
    return x


def _log_midpoint(a: float, b: float) -> float:
    """exp(lerp(log a, log b, 1/2)): the geometric mean, computed as ComfyUI does."""
    log_a = math.log(a)
    return math.exp(log_a + 0.5 * (math.log(b) - log_a))


def dpm_2(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """DPM-Solver-2 style midpoint steps in log sigma; the step to sigma 0 is an Euler step."""
    steps = _steps(sigmas)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_next)
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = (x_2 - model(x_2, sigma_mid)) / sigma_mid
            x = x + d_2 * (sigma_next - sigma)
        on_step(i + 1, steps)
    return x


def dpm_2_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        d = (x - denoised) / sigma
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = (x_2 - model(x_2, sigma_mid)) / sigma_mid
            x = x + d_2 * (sigma_down - sigma)
            x = x + noise(sigma, sigma_next) * sigma_up
        on_step(i + 1, steps)
    return x


def dpmpp_2s_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    """DPM-Solver++(2S) down to the ancestral sigma_down, then fresh noise up to the next sigma."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        if sigma_down == 0:
            x = x + (x - denoised) / sigma * (sigma_down - sigma)
        else:
            h = math.log(sigma) - math.log(sigma_down)  # lambda = -log(sigma)
            sigma_mid = math.exp(math.log(sigma) - h / 2)
            x_2 = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, sigma_mid)
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_up
        on_step(i + 1, steps)
    return x


# --- multistep -----------------------------------------------------------------------------------------


def _lms_coefficient(sigmas: list[float], i: int, j: int, order: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial that is 1 at sigma_(i-j) and 0 at
    the other sigma_(i-k), k < order. ComfyUI integrates it numerically (scipy quad, rel. tol 1e-4, which is
    exact for these low-degree polynomials up to rounding); here it is integrated in closed form."""
    node = sigmas[i - j]
    others = [sigmas[i - k] for k in range(order) if k != j]
    poly = np.polynomial.polynomial
    basis = poly.polyfromroots(others) / math.prod(node - other for other in others) if others else np.ones(1)
    antiderivative = poly.polyint(basis)
    return float(poly.polyval(sigmas[i + 1], antiderivative) - poly.polyval(sigmas[i], antiderivative))


def lms(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last 4 derivatives; the step to 0 denoises."""
    order = 4
    steps = _steps(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        ds = [*ds[-(order - 1):], (x - denoised) / sigma]
        if sigma_next == 0:
            x = denoised
        else:
            current = min(i + 1, order)
            x = x + sum(_lms_coefficient(sigmas, i, j, current) * d for j, d in enumerate(reversed(ds)))
        on_step(i + 1, steps)
    return x


def dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """DPM-Solver++(2M): data-prediction exponential integrator, second order from the previous estimate."""
    steps = _steps(sigmas)
    old_denoised: torch.Tensor | None = None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)  # lambda = -log(sigma)
            if old_denoised is None:
                target = denoised
            else:
                r = (math.log(sigmas[i - 1]) - math.log(sigma)) / h
                target = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = (sigma_next / sigma) * x - math.expm1(-h) * target
        old_denoised = denoised
        on_step(i + 1, steps)
    return x


# --- SDE samplers (Brownian-tree noise) ----------------------------------------------------------------


def _brownian_sampler(body: Callable[..., torch.Tensor], on_cpu: bool, flow: bool = False) -> Sampler:
    """A sampler over `body` with ComfyUI's Brownian-tree noise. For a flow model the first sigma, when it is
    1 (lambda = -inf), moves to `first_sigma` (the model's sigma at 0.01 % of the schedule, as ComfyUI's
    offset_first_sigma_for_snr does); the tree still spans the schedule as given, as ComfyUI builds it first."""
    def sampler(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback,
                first_sigma: float = 1.0 - 1e-4):
        if len(sigmas) <= 1:
            return x
        noise = BrownianNoise(x, sigmas, seed, on_cpu=on_cpu)
        if flow and sigmas[0] >= 1.0:
            sigmas = [float(_f32(first_sigma)), *sigmas[1:]]
        return body(model, x, sigmas, noise, on_step, flow)

    sampler.__name__ = body.__name__.lstrip("_") + ("" if on_cpu else "_gpu") + ("_rf" if flow else "")
    sampler.__doc__ = body.__doc__
    sampler.takes_first_sigma = flow  # type: ignore[attr-defined]
    return sampler


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


# ComfyUI writes its SDE samplers in half log-SNR lambda = log(alpha / sigma), for any model type: sigma
# space has alpha = 1 (lambda = -log sigma); flow (CONST) models scale the signal by alpha = 1 - sigma
# (lambda = log((1 - sigma) / sigma)). With `flow` False every factor below is 1.0 and the arithmetic is the
# sigma-space one exactly.
def _snr_sigma(sigma: float, flow: bool) -> float:
    """exp(-lambda): sigma itself, or sigma / (1 - sigma) for a flow model."""
    return sigma / (1.0 - sigma) if flow else sigma


def _alpha(sigma: float, flow: bool) -> float:
    return 1.0 - sigma if flow else 1.0


def _half_log_snr_midpoint(sigma: float, sigma_next: float, flow: bool) -> float:
    """The sigma halfway between two sigmas in lambda, in float32 as ComfyUI computes it (it is also a query
    time of the Brownian tree, which rounds to 1e-6)."""
    if flow:
        lambda_s, lambda_t = -_f32(sigma).logit(), -_f32(sigma_next).logit()
        return float((-(lambda_s + 0.5 * (lambda_t - lambda_s))).sigmoid())
    lambda_s, lambda_t = -_f32(sigma).log(), -_f32(sigma_next).log()
    return float((-(lambda_s + 0.5 * (lambda_t - lambda_s))).exp())


def _dpmpp_sde(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: BrownianNoise, on_step: StepCallback,
    flow: bool = False,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, r = 1/2): an ancestral half step to the lambda midpoint, a model call there,
    then an ancestral full step; two model calls per step."""
    steps = _steps(sigmas)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_mid = _half_log_snr_midpoint(sigma, sigma_next, flow)
            snr, alpha = _snr_sigma(sigma, flow), _alpha(sigma, flow)
            alpha_mid, alpha_next = _alpha(sigma_mid, flow), _alpha(sigma_next, flow)

            sigma_down, sigma_up = ancestral_step(snr, _snr_sigma(sigma_mid, flow))
            h = math.log(snr) - math.log(sigma_down)
            x_2 = (alpha_mid / alpha * math.exp(-h)) * x - (alpha_mid * math.expm1(-h)) * denoised
            x_2 = x_2 + noise(sigma, sigma_mid) * (alpha_mid * sigma_up)
            denoised_2 = model(x_2, sigma_mid)

            sigma_down, sigma_up = ancestral_step(snr, _snr_sigma(sigma_next, flow))
            h = math.log(snr) - math.log(sigma_down)
            x = (alpha_next / alpha * math.exp(-h)) * x - (alpha_next * math.expm1(-h)) * denoised_2
            x = x + noise(sigma, sigma_next) * (alpha_next * sigma_up)
        on_step(i + 1, steps)
    return x


def _dpmpp_2m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: BrownianNoise, on_step: StepCallback,
    flow: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint rule."""
    steps = _steps(sigmas)
    old_denoised: torch.Tensor | None = None
    h_last: float | None = None
    h: float | None = None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(_snr_sigma(sigma, flow)) - math.log(_snr_sigma(sigma_next, flow))
            alpha_next = _alpha(sigma_next, flow)
            decay = -math.expm1(-2 * h)  # 1 - exp(-2h)
            x = (sigma_next / sigma * math.exp(-h)) * x + (alpha_next * decay) * denoised
            if old_denoised is not None and h_last is not None:
                x = x + (0.5 * alpha_next * decay * h / h_last) * (denoised - old_denoised)
            x = x + noise(sigma, sigma_next) * (sigma_next * math.sqrt(decay))
        old_denoised, h_last = denoised, h
        on_step(i + 1, steps)
    return x


def _dpmpp_3m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: BrownianNoise, on_step: StepCallback,
    flow: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third order from the two previous estimates once they exist."""
    steps = _steps(sigmas)
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h: float | None = None
    h_1: float | None = None
    h_2: float | None = None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(_snr_sigma(sigma, flow)) - math.log(_snr_sigma(sigma_next, flow))
            alpha_next = _alpha(sigma_next, flow)
            h_eta = 2 * h
            x = (sigma_next / sigma * math.exp(-h)) * x - (alpha_next * math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_next * phi_2) * d1 - (alpha_next * phi_3) * d2
            elif h_1 is not None and denoised_1 is not None:
                x = x + (alpha_next * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            x = x + noise(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * h)))
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        on_step(i + 1, steps)
    return x


dpmpp_sde = _brownian_sampler(_dpmpp_sde, on_cpu=True)
dpmpp_sde_gpu = _brownian_sampler(_dpmpp_sde, on_cpu=False)
dpmpp_2m_sde = _brownian_sampler(_dpmpp_2m_sde, on_cpu=True)
dpmpp_2m_sde_gpu = _brownian_sampler(_dpmpp_2m_sde, on_cpu=False)
dpmpp_3m_sde = _brownian_sampler(_dpmpp_3m_sde, on_cpu=True)
dpmpp_3m_sde_gpu = _brownian_sampler(_dpmpp_3m_sde, on_cpu=False)


# --- UniPC ---------------------------------------------------------------------------------------------
# ComfyUI's UniPC (comfy/extra_samplers/uni_pc.py) works on VP-scaled latents x / sqrt(1 + sigma^2) with
# noise predictions turned back into data predictions; in sigma space the same update reads as below (with
# alpha_t = 1 and lambda = -log sigma). "uni_pc" is the B(h) = h variant (bh1), "uni_pc_bh2" B(h) = e^h - 1.

_UNIPC_END = 0.001  # ComfyUI stops UniPC at sigma 0.001 when the schedule ends at 0


def _unipc_update(
    model: Denoiser,
    x: torch.Tensor,
    previous: list[tuple[float, torch.Tensor]],
    sigma_t: float,
    order: int,
    corrector: bool,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC step from the newest of `previous` (sigma, data prediction) to sigma_t: predictor of
    `order` from the last `order` predictions, then the corrector with the prediction at the new point (that
    model call is returned for reuse as the next step's)."""
    sigma_0, m_0 = previous[-1]
    lambda_0 = -math.log(sigma_0)
    h = -math.log(sigma_t) - lambda_0
    ratios: list[float] = []
    differences: list[torch.Tensor] = []
    for k in range(1, order):
        sigma_k, m_k = previous[-(k + 1)]
        r_k = (-math.log(sigma_k) - lambda_0) / h
        ratios.append(r_k)
        differences.append((m_k - m_0) / r_k)
    ratios.append(1.0)

    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, rhs = [], []
    h_phi_k, factorial = math.expm1(hh) / hh - 1, 1
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in ratios])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    matrix, vector = np.array(rows), np.array(rhs)

    x_first = (sigma_t / sigma_0) * x - h_phi_1 * m_0
    x_t = x_first
    if differences:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(matrix[:-1, :-1], vector[:-1]).tolist()
        x_t = x_first - b_h * sum(float(rho) * d for rho, d in zip(rhos_p, differences, strict=True))
    if not corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else np.linalg.solve(matrix, vector).tolist()
    m_t = model(x_t, sigma_t)
    correction = (m_t - m_0) * float(rhos_c[-1])
    for rho, d in zip(rhos_c[:-1], differences, strict=True):
        correction = correction + float(rho) * d
    return x_first - b_h * correction, m_t


def _unipc(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], on_step: StepCallback, variant: str
) -> torch.Tensor:
    """Multistep UniPC of order min(3, steps - 1), lowering the order over the last steps, with the corrector
    on every step but the last (one model call per step)."""
    if len(sigmas) <= 1:
        return x
    times = [*sigmas[:-1], _UNIPC_END] if sigmas[-1] == 0 else list(sigmas)
    steps = len(times) - 1
    order = min(3, steps - 1)
    previous = [(times[0], model(x, times[0]))]
    at = times[0]
    on_step(1, steps)
    for index in range(1, steps):
        if index < order:  # warm-up: orders 1, 2, ... from the predictions so far
            x, m = _unipc_update(model, x, previous, times[index], index, True, variant)
            assert m is not None
            previous.append((times[index], m))
            at = times[index]
        else:
            for step in (index, steps) if index == steps - 1 else (index,):
                step_order = min(order, steps + 1 - step)
                x, m = _unipc_update(model, x, previous, times[step], step_order, step < steps, variant)
                at = times[step]
                if m is not None:
                    previous = [*previous[1:], (times[step], m)]
        on_step(index + 1, steps)
    if at != times[-1]:
        # One step: nothing was integrated. ComfyUI still rescales its VP latent for the last sigma.
        x = x * math.sqrt((1 + times[-1] ** 2) / (1 + at**2))
    return x


def uni_pc(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    return _unipc(model, x, sigmas, on_step, "bh1")


def uni_pc_bh2(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    return _unipc(model, x, sigmas, on_step, "bh2")


# In ComfyUI's order. "ddim" is ComfyUI's Euler sampler (it differs only in inpainting noise, see
# RANDOM_INPAINT_NOISE).
SAMPLERS: dict[str, Sampler] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_sde_gpu": dpmpp_sde_gpu,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": dpmpp_2m_sde_gpu,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": dpmpp_3m_sde_gpu,
    "lcm": lcm,
    "ddim": euler,
    "uni_pc": uni_pc,
    "uni_pc_bh2": uni_pc_bh2,
}
