"""Hook contexts: every hook HeadScope puts on a model is registered here and removed on exit, whatever happens.

Two sites carry most interventions and recordings:
- a block's input, the residual stream entering decoder block l: (B, T, d_model);
- a layer's output-projection input, the heads' outputs side by side by query head: (B, T, n_heads * head_dim).
Circuits (app.inspect.engine.nodes) also watch and edit any module's first input or output (a norm's input, an
MLP's input and output, a query/key/value projection's output), and keep gradients with `on_grad`.

Modules are looked up when a context is entered, so a context that finds its blocks by index must be entered
before `resume.starting_at` swaps the blocks before the resume point for stand-ins (engine.rows does so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from app.inspect.model.adapters import Adapter

Edit = Callable[[torch.Tensor], torch.Tensor]  # an activation in, the activation to use instead out (same shape)
Keep = Callable[[torch.Tensor], torch.Tensor]  # an activation in, what to record of it out
K = TypeVar("K")  # what a caller names its modules by (a layer, a (kind, layer) pair)


@contextmanager
def pre_hooks(
    hooks: Iterable[tuple[nn.Module, Callable[..., Any]]], with_kwargs: bool = False, prepend: bool = False
) -> Iterator[None]:
    """Forward pre-hooks on modules for the duration of the block (the one place HeadScope registers hooks)."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs, prepend=prepend))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    x: torch.Tensor = args[0] if args else kwargs["hidden_states"]
    return x


@contextmanager
def editing_inputs(modules: Mapping[K, nn.Module], edits: Mapping[K, Edit], prepend: bool = False) -> Iterator[None]:
    """Replace the first input x of each module in `edits` (positional, or `hidden_states`) by `edits[key](x)`.

    `prepend`: run before any pre-hook already on the module.
    """

    def make(edit: Edit) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            edited = edit(_block_input(args, kwargs))
            if args:
                return (edited, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edited}

        return hook

    with pre_hooks(((modules[key], make(edit)) for key, edit in edits.items()), with_kwargs=True, prepend=prepend):
        yield


def editing_block_inputs(
    blocks: Mapping[int, nn.Module], edits: Mapping[int, Edit], prepend: bool = False
) -> AbstractContextManager[None]:
    """Replace the residual stream entering each block in `edits` by `edits[layer](x)`, x (B, T, d_model).

    `prepend`: run before any pre-hook already on the block (resume's input swap must come first, so a patch
    of the first block's input applies to the swapped-in stream).
    """
    return editing_inputs(blocks, edits, prepend)


@contextmanager
def watching_inputs(modules: Mapping[K, nn.Module], watch: Callable[[K, torch.Tensor], None]) -> Iterator[None]:
    """Call `watch(key, x)` with the first input x of each module (positional, or `hidden_states`) as it runs."""

    def make(key: K) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            watch(key, _block_input(args, kwargs))

        return hook

    with pre_hooks(((module, make(key)) for key, module in modules.items()), with_kwargs=True):
        yield


def _first(output: Any) -> torch.Tensor:
    """A module's output tensor: itself, or the first element of a tuple (GPT-OSS's MLP adds router scores)."""
    x: torch.Tensor = output[0] if isinstance(output, tuple) else output
    return x


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Forward hooks (after the module runs) for the duration of the block."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def watching_outputs(modules: Mapping[K, nn.Module], watch: Callable[[K, torch.Tensor], None]) -> Iterator[None]:
    """Call `watch(key, y)` with each module's output y (the first element of a tuple) once it has run."""

    def make(key: K) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            watch(key, _first(output))

        return hook

    with forward_hooks((module, make(key)) for key, module in modules.items()):
        yield


@contextmanager
def editing_outputs(modules: Mapping[K, nn.Module], edits: Mapping[K, Edit]) -> Iterator[None]:
    """Replace each module's output y (the first element of a tuple) by `edits[key](y)`."""

    def make(edit: Edit) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        return hook

    with forward_hooks((modules[key], make(edit)) for key, edit in edits.items()):
        yield


def on_grad(x: torch.Tensor, keep: Callable[[torch.Tensor], None]) -> None:
    """Call `keep(grad)` when a backward pass reaches `x` (a tensor hook: it lives and dies with x's graph)."""

    def hook(grad: torch.Tensor) -> None:
        keep(grad)

    x.register_hook(hook)  # type: ignore[no-untyped-call]


@contextmanager
def recording_block_inputs(adapter: Adapter, into: dict[int, torch.Tensor]) -> Iterator[None]:
    """Store the residual stream entering every block, (B, T, d_model), detached, in `into[layer]`."""

    def make(layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            into[layer] = _block_input(args, kwargs).detach()

        return hook

    with pre_hooks(((block, make(layer)) for layer, block in enumerate(adapter.layers)), with_kwargs=True):
        yield


@contextmanager
def editing_head_outputs(adapter: Adapter, edits: Mapping[int, Edit]) -> Iterator[None]:
    """Replace each layer's output-projection input by `edits[layer](x)`, x (B, T, n_heads, head_dim).

    The edit sees the heads split out (a view); what it returns is joined back to (B, T, n_heads * head_dim).
    """
    n_heads, head_dim = adapter.layout.n_heads, adapter.layout.head_dim

    def make(edit: Edit) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]  # (B, T, n_heads * head_dim)
            b, t, _ = x.shape
            edited = edit(x.view(b, t, n_heads, head_dim))  # (B, T, n_heads, head_dim)
            return (edited.reshape(b, t, n_heads * head_dim), *args[1:])

        return hook

    with pre_hooks((adapter.out_proj(layer), make(edit)) for layer, edit in edits.items()):
        yield


@contextmanager
def recording_head_outputs(
    adapter: Adapter,
    into: dict[int, torch.Tensor],
    keep: Keep = lambda x: x.detach(),
    layers: Iterable[int] | None = None,
) -> Iterator[None]:
    """Store `keep(x)` of every layer's output-projection input x (B, T, n_heads * head_dim) in `into[layer]`."""

    def make(layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            into[layer] = keep(args[0])

        return hook

    chosen = range(adapter.layout.n_layers) if layers is None else layers
    with pre_hooks((adapter.out_proj(layer), make(layer)) for layer in chosen):
        yield


@contextmanager
def before_every_block(adapter: Adapter, check: Callable[[], None]) -> Iterator[None]:
    """Call `check()` before each decoder block runs (it may raise to stop a long forward between blocks)."""

    def hook(module: nn.Module, args: Any) -> None:
        check()

    with pre_hooks((block, hook) for block in adapter.layers):
        yield
