#!/usr/bin/env python3
"""Derives the Winograd transforms of src/tensor/winograd.rs's `Span`s and checks them exactly.

Run from anywhere (needs sympy):

    python3 scripts/winograd_covers.py

A tile of a 3×3 convolution covers four outputs along each axis with F(4, 3) on the six points
0, 1, −1, 1/2, −2, ∞ (`G`, `Bᵀ`, `Aᵀ` in the module's documentation). The last tile of a side
that is not a multiple of four covers only `m` = 1, 2 or 3 outputs, and then uses F(m, 3) on
`m + 2` of those points — the first `m + 1` finite ones and ∞ — with the same rows of `G`, so
that one Winograd-domain kernel `U = G·g·Gᵀ` serves every tile. For each `m` this takes `Aᵀ`
as the Vandermonde rows at its points (∞ in the last row), solves the linear system that makes
`Aᵀ·[(G·g) ⊙ (Bᵀ·d)]` the correlation of `d` with `g` for every `g` and `d`, prints `Bᵀ` and
`Aᵀ` in rational numbers, and checks the identity symbolically. For `m` = 4 it reproduces the
module's `Bᵀ`.
"""

import sympy as sp

R = sp.Rational
POINTS = [R(0), R(1), R(-1), R(1, 2), R(-2), None]  # None: the point at infinity
# The scale of each row of G (the module's G = diag(SCALE) · [1, p, p²], ∞ → [0, 0, 1]).
SCALE = [R(1), R(1, 3), R(-1, 3), R(-16, 15), R(1, 15), R(1)]
# The points (indices into POINTS) a tile covering m outputs uses.
KEEPS = {4: [0, 1, 2, 3, 4, 5], 3: [0, 1, 2, 3, 5], 2: [0, 1, 2, 5], 1: [0, 1, 5]}
MODULE_BT = [
    [1, R(-3, 2), -2, R(3, 2), 1, 0],
    [0, -1, R(1, 2), R(5, 2), 1, 0],
    [0, 1, R(-5, 2), R(1, 2), 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, R(1, 2), -1, R(-1, 2), 1, 0],
    [0, 1, R(-3, 2), -2, R(3, 2), 1],
]


def g_row(i):
    p = POINTS[i]
    return [0, 0, SCALE[i]] if p is None else [SCALE[i], SCALE[i] * p, SCALE[i] * p * p]


def derive(m):
    keeps = KEEPS[m]
    n = m + 2
    g_mat = sp.Matrix([g_row(i) for i in keeps])
    at = sp.zeros(m, n)
    for col, i in enumerate(keeps):
        p = POINTS[i]
        for r in range(m):
            at[r, col] = (1 if r == m - 1 else 0) if p is None else p**r
    bt = sp.Matrix(n, n, lambda a, b: sp.Symbol(f"b{a}_{b}"))
    equations = []
    for r in range(m):
        for k in range(3):
            for j in range(n):
                value = sum(at[r, x] * g_mat[x, k] * bt[x, j] for x in range(n))
                equations.append(value - (1 if j == r + k else 0))
    solutions = sp.solve(equations, list(bt), dict=True)
    assert len(solutions) == 1, f"m = {m}: {len(solutions)} solutions"
    bt = bt.subs(solutions[0])
    # The identity, symbolically: Aᵀ·[(G·g) ⊙ (Bᵀ·d)] = correlation(d, g) on m outputs.
    g = sp.Matrix(sp.symbols("g0:3"))
    d = sp.Matrix(sp.symbols(f"d0:{n}"))
    y = at * (g_mat * g).multiply_elementwise(bt * d)
    for r in range(m):
        want = sum(g[k] * d[r + k] for k in range(3))
        assert sp.expand(y[r] - want) == 0, f"m = {m}, output {r}"
    return at, bt


def main():
    for m in (4, 3, 2, 1):
        at, bt = derive(m)
        names = ", ".join("∞" if POINTS[i] is None else str(POINTS[i]) for i in KEEPS[m])
        print(f"m = {m}, points {names}")
        print("  Bᵀ =", bt.tolist())
        print("  Aᵀ =", at.tolist())
        if m == 4:
            assert bt == sp.Matrix(MODULE_BT), "F(4, 3) does not reproduce the module's Bᵀ"
    print("every identity holds")


if __name__ == "__main__":
    main()
