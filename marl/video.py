"""Render greedy episodes of a trained learner to a video file (.mp4 or .gif)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from marl import envs
from marl.core.errors import MarlError, first_line
from marl.core.rollout import reset_hidden, to_tensors
from marl.core.vec import VecEnv


def record_video(env: str, env_kwargs: dict, policy, device: torch.device, path: str, seed: int = 0,
                 episodes: int = 1, fps: int = 15) -> str:
    """Play `episodes` greedy episodes in one env rendered as rgb_array and write them to `path`."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise MarlError("writing a video needs imageio", "pip install 'marl[video]'") from None
    out = Path(path)
    if not out.parent.is_dir():
        raise MarlError(f"the folder {out.parent} for video {out} does not exist", "create it first, or write the video into an existing folder")
    # rgb_array frames need no window: SDL (pygame) must not probe for a display or print about one
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    with warnings.catch_warnings():  # gymnasium warns of an undeclared render mode; a failing render says more
        warnings.filterwarnings("ignore", message=".*render_mode.*", category=UserWarning)
        vec = VecEnv(envs.make_factory(env, **{**env_kwargs, "render_mode": "rgb_array"}), 1, seed=seed)
    frames: list[np.ndarray] = []
    try:
        last = to_tensors(vec.reset(seed), device)
        hidden = policy.initial_hidden(1)
        done = 0
        while done < episodes:
            try:
                frame = vec.render()
            except Exception as err:  # noqa: BLE001 - the renderer's own failure, e.g. no display for pyglet
                raise MarlError(f"env '{env}' could not render a frame ({type(err).__name__}: {first_line(err)})",
                                "renderers that open a window need a display: run under one (e.g. xvfb-run marl evaluate ...), "
                                "or drop --video") from err
            if frame is None:
                raise MarlError(f"env '{env}' returned no frame from render()", "pick an env that supports render_mode='rgb_array'")
            frames.append(np.asarray(frame, dtype=np.uint8))
            actions, hidden, _ = policy.act(last, hidden, False)
            arrays, finished = vec.step(actions.cpu().numpy())
            done += len(finished)
            last = to_tensors(arrays, device)
            hidden = reset_hidden(hidden, torch.as_tensor(arrays["done"], device=device))
    finally:
        vec.close()
    try:
        if out.suffix.lower() == ".gif":
            imageio.mimsave(out, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(out, frames, fps=fps, macro_block_size=1)
    except (ValueError, RuntimeError, OSError) as err:
        raise MarlError(f"could not write video {out}: {err}", "use a .gif or .mp4 path (mp4 needs imageio-ffmpeg: pip install 'marl[video]')") from err
    return str(out)
