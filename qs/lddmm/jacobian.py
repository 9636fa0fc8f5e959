"""Jacobian determinant of a map ``phi = id + disp`` given by its displacement in mm."""

from __future__ import annotations

import torch


def jacobian_matrix(disp: torch.Tensor, spacing) -> torch.Tensor:
    """``D phi = I + D disp``, shape ``(3, 3, *S)``, entry ``[i, j] = d phi_i / d x_j``.

    Central differences inside, one-sided at the faces (``torch.gradient``).
    """
    if disp.dim() != 4 or disp.shape[0] != 3:
        raise ValueError(f"jacobian_matrix: displacement must be (3, I, J, K), got {tuple(disp.shape)}")
    rows = []
    for i in range(3):
        grads = torch.gradient(disp[i], spacing=[float(h) for h in spacing], dim=(0, 1, 2), edge_order=1)
        rows.append(torch.stack([g + (1.0 if j == i else 0.0) for j, g in enumerate(grads)]))
    return torch.stack(rows)


def jacobian_determinant(disp: torch.Tensor, spacing) -> torch.Tensor:
    """``det(I + D disp)`` per voxel, shape ``S``."""
    J = jacobian_matrix(disp, spacing)
    return (J[0, 0] * (J[1, 1] * J[2, 2] - J[1, 2] * J[2, 1])
            - J[0, 1] * (J[1, 0] * J[2, 2] - J[1, 2] * J[2, 0])
            + J[0, 2] * (J[1, 0] * J[2, 1] - J[1, 1] * J[2, 0]))
