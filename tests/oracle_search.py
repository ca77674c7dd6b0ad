"""The straightforward AMP search, kept as the oracle the fast search must match (tests and benchmark).

Every candidate is a freshly sliced model (``amp_hf.slice_model``) run end to end on every batch: no caching,
no module swapping — only the method's definition (AMP's last-to-first binary search per layer).
"""

from __future__ import annotations

import torch

import amp_hf
from amp_hf.selection import round_width


def oracle_search(model, scores, batches, criterion, delta_e, steps=6, round_to=1, acceptance="rise",
                  build=amp_hf.slice_model):
    """``build(model, plan)``: the candidate model (default: plainly sliced)."""
    adapter = amp_hf.get_adapter(model)
    full = adapter.widths(model)
    order = [torch.sort(-torch.as_tensor(s, dtype=torch.float64), stable=True).indices for s in scores]

    def entropy(widths):
        plan = amp_hf.PrunePlan(full, [order[i][:w].tolist() for i, w in enumerate(widths)])
        pruned = amp_hf.resolve(build(model, plan), adapter)
        with torch.no_grad():
            return float(torch.stack([criterion(pruned, b).double() for b in batches]).mean())

    widths = list(full)
    reference = entropy(widths)
    for layer in range(len(full) - 1, -1, -1):
        lo, hi, best, best_value = 0, full[layer], full[layer], None
        for _ in range(steps):
            width = round_width((lo + hi) // 2, full[layer], round_to)
            value = entropy(widths[:layer] + [width] + widths[layer + 1:])
            rise = value - reference
            if rise <= delta_e if acceptance == "rise" else abs(rise) <= delta_e:
                hi, best, best_value = width, width, value
            else:
                lo = width
        widths[layer] = best
        if best_value is not None:
            reference = best_value
    return widths


def oracle_refit_search(model, scores, batches, criterion, delta_e, steps=6, damping=1e-2, heldout_fraction=0.25,
                        acceptance="rise"):
    """The reconstruction-aware search by definition: every candidate is the whole model sliced and then
    reconstructed (``amp_hf.reconstruct``, independent mode: each layer fit on the original network's
    activations, as the search sees them; no end-to-end fallback), run end to end. Returns the widths and the
    final reconstructed model."""
    from amp_hf.reconstruct import ReconstructConfig, reconstruct

    config = ReconstructConfig(enabled=True, mode="independent", end_to_end_check=False, damping=damping,
                               heldout_fraction=heldout_fraction)

    def rebuild(model, plan):
        return reconstruct(model, plan, batches, config, criterion=criterion)[0]

    widths = oracle_search(model, scores, batches, criterion, delta_e, steps, acceptance=acceptance, build=rebuild)
    order = [torch.sort(-torch.as_tensor(s, dtype=torch.float64), stable=True).indices for s in scores]
    final = rebuild(model, amp_hf.PrunePlan([len(s) for s in scores], [o[:w].tolist() for o, w in zip(order, widths)]))
    return widths, final
