"""Slipstream physics: crystal plasticity and field dislocation mechanics on DOLFINx.

Importing :mod:`solver` is cheap and never imports dolfinx, petsc4py or mpi4py:
the modules that need the FEM stack (``solver.fem``, ``solver.simulate``) import
it themselves, so the pure-NumPy pieces (rotations, lattices, materials, the
constitutive kernel, readers, the store layout) also serve the surrogate side.
"""

__version__ = "0.1.0"
