"""The native patch series: this package's features as edits of a megatron-core source tree.

``tools/upstream/make_native.py`` is the command line. The pieces, one concept per module:

* :mod:`~megatron.minimax.upstream.source_anchor`: finding a statement in a source file by its
  qualified scope and text (the anchor every edit names);
* :mod:`~megatron.minimax.upstream.source_edits`: the edits (insert, replace, new file), applied in
  memory and idempotent;
* :mod:`~megatron.minimax.upstream.source_lifting`: lifting fields, checks, classes and methods out
  of this package's own source files, the only source of the inserted code;
* :mod:`~megatron.minimax.upstream.native_series`: the series itself, one feature per commit;
* :mod:`~megatron.minimax.upstream.target_tree`: what kind of tree is patched, and its version;
* :mod:`~megatron.minimax.upstream.patch_series`: planning, applying and ``git format-patch``.
"""
