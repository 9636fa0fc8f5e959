"""qs: Quicksilver (fast predictive LDDMM registration) for cohort studies.

Conventions used throughout the package
---------------------------------------
* Images are NIfTI files read with nibabel. Arrays keep nibabel's voxel axis
  order ``(i, j, k)``; torch tensors are ``(N, C, I, J, K)`` in that order.
* Physical coordinates are nibabel world coordinates (RAS+, mm) unless a name
  says ``lps`` (ITK/ANTs world coordinates: x and y negated).
* The working grid is atlas space with a diagonal affine and positive spacing,
  so voxel axis ``c`` runs along world axis ``c`` (R, A, S).
* Vector fields inside the LDDMM engine (momentum, velocity, displacement)
  are ``(N, 3, I, J, K)`` with component ``c`` along voxel axis ``c``, in mm.
* Maps ``phi`` are absolute positions, in mm, relative to the grid origin
  (voxel ``(0, 0, 0)`` is at ``0``), component order as above.
* Outputs are written under a temporary name and renamed (``qs.io``).
"""

__version__ = "0.1.0"
