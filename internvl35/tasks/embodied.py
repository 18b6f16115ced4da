"""Embodied: a top-down grid world (agent, goal, walls); pick the next move or a relation.

Rows and columns are counted from 1 at the top-left; north is up. Any move that starts
some shortest path (breadth-first search around the walls) is a correct next move.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks.base import Family, Sample, pick_kind, rng_for

NAME = "embodied"
KINDS = ("move", "direction", "closer")
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
LEGEND = "The blue circle is the agent, the green square is the goal and dark cells are walls."

Cell = tuple[int, int]


def distances(n: int, walls: set[Cell], goal: Cell) -> dict[Cell, int]:
    """Steps from every reachable cell to `goal` (BFS outward from the goal)."""
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and nxt not in walls and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def _world(rng: np.random.Generator, n: int, with_coin: bool):
    """Agent, goal, optional coin and 5-9 walls, resampled until the goal is reachable."""
    while True:
        cells = [divmod(int(i), n) for i in rng.choice(n * n, size=12, replace=False)]
        agent, goal, coin = cells[0], cells[1], cells[2] if with_coin else None
        walls = set(cells[3 : 3 + int(rng.integers(5, 10))])
        dist = distances(n, walls, goal)
        if agent not in dist:
            continue
        if with_coin and _steps(agent, goal) == _steps(agent, coin):
            continue
        return agent, goal, coin, walls, dist


def _steps(a: Cell, b: Cell) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def _draw(n: int, size: int, agent: Cell, goal: Cell, coin: Cell | None, walls: set[Cell]) -> Image.Image:
    """1. cell = size // n (224 px, n = 6: 37 px), the grid centred with a small margin;
    2. walls fill their cell; agent, goal and coin are inset by 1/6 of a cell."""
    cell = size // n
    off = (size - cell * n) // 2
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    box = lambda rc, inset=0: (  # noqa: E731
        off + rc[1] * cell + inset, off + rc[0] * cell + inset,
        off + (rc[1] + 1) * cell - inset, off + (rc[0] + 1) * cell - inset,
    )  # fmt: skip
    for w in walls:
        d.rectangle(box(w), fill=(60, 60, 60))
    for i in range(n + 1):
        p = off + i * cell
        d.line([(off, p), (off + n * cell, p)], fill=(190, 190, 190))
        d.line([(p, off), (p, off + n * cell)], fill=(190, 190, 190))
    inset = cell // 6
    d.rectangle(box(goal, inset), fill=(30, 160, 50))
    d.ellipse(box(agent, inset), fill=(30, 70, 230))
    if coin is not None:
        d.ellipse(box(coin, inset), fill=(235, 190, 0))
    return img


def _at(name: str, rc: Cell) -> str:
    return f"the {name} is at row {rc[0] + 1}, column {rc[1] + 1}"


def _move(agent: Cell, goal: Cell, dist: dict[Cell, int]):
    d = dist[agent]
    good = [m for m, (dr, dc) in MOVES.items() if dist.get((agent[0] + dr, agent[1] + dc)) == d - 1]
    ans = good[0]
    why = (
        f"{_at('agent', agent).capitalize()} and {_at('goal', goal)}. "
        f"Around the walls the shortest path takes {d} moves. "
        f"Moving {ans} reaches a cell {d - 1} moves from the goal, so {ans} starts a shortest path."
    )
    q = (
        f"{LEGEND} Which move starts a shortest path from the agent to the goal? "
        "Answer with up, down, left or right."
    )
    return q, ans, why, {"type": "choice", "answers": good, "options": list(MOVES)}


def _direction(rng: np.random.Generator, agent: Cell, goal: Cell):
    axes = [a for a in (0, 1) if agent[a] != goal[a]]
    axis = axes[int(rng.integers(len(axes)))]
    if axis == 0:
        opts, ans = ["north", "south"], "north" if goal[0] < agent[0] else "south"
        rel = "higher" if ans == "north" else "lower"
        why = f"The agent is in row {agent[0] + 1} and the goal in row {goal[0] + 1}; the goal is {rel}"
    else:
        opts, ans = ["west", "east"], "west" if goal[1] < agent[1] else "east"
        rel = "further left" if ans == "west" else "further right"
        why = f"The agent is in column {agent[1] + 1} and the goal in column {goal[1] + 1}; the goal is {rel}"
    why += f", so it is {ans} of the agent."
    a, b = opts
    q = f"{LEGEND} North is up. Is the goal {a} or {b} of the agent? Answer with {a} or {b}."
    return q, ans, why, {"type": "choice", "answers": [ans], "options": opts}


def _closer(agent: Cell, goal: Cell, coin: Cell):
    dg, dc = _steps(agent, goal), _steps(agent, coin)
    ans = "goal" if dg < dc else "coin"
    why = (
        f"{_at('agent', agent).capitalize()}, {_at('goal', goal)} and {_at('coin', coin)}. "
        f"Ignoring walls the goal is {dg} steps away and the coin {dc}. "
        f"{min(dg, dc)} < {max(dg, dc)}, so the {ans} is closer."
    )
    q = (
        f"{LEGEND} The yellow circle is a coin. Counting grid steps and ignoring walls, which is closer "
        "to the agent: the goal or the coin? Answer with goal or coin."
    )
    return q, ans, why, {"type": "choice", "answers": [ans], "options": ["goal", "coin"]}


def generate(seed: int, kind: str | None = None, size: int = 224, n: int = 6) -> Sample:
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    agent, goal, coin, walls, dist = _world(rng, n, with_coin=kind == "closer")
    if kind == "move":
        q, ans, why, target = _move(agent, goal, dist)
    elif kind == "direction":
        q, ans, why, target = _direction(rng, agent, goal)
    else:
        q, ans, why, target = _closer(agent, goal, coin)
    return Sample(NAME, kind, [_draw(n, size, agent, goal, coin, walls)], q, ans, why, target)


FAMILY = Family(NAME, KINDS, generate)
