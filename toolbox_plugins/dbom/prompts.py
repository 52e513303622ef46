"""Learned prompt tokens through a frozen text tower: "[ctx]_k [first] [second]" where every bracket
is a learned vector, not a word (CSP / DFSP-style soft prompts, as DBOM's prefix tuning).

The prompt is tokenised once with placeholder words ("x x x t o", each one token), and a forward
hook on the token embedding writes the learned vectors over the placeholders' rows; positions,
attention mask and the end-of-text pooling stay the tower's own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toolbox.api import ClipModel

PLACEHOLDER = "x"  # one token in CLIP's BPE, as "t" and "o" are


def token_embedding(model: ClipModel) -> nn.Module:
    """The model's token embedding module, or a clear error for an adapter that does not expose it."""
    get = getattr(model, "token_embedding", None)
    if get is None:
        raise ValueError(
            "DBOM learns prompt tokens: the model's adapter must expose its text tower's token embedding "
            "(token_embedding(); open_clip and transformers CLIP models do)"
        )
    return get()


class SoftPrompts:
    """Encode prompts of ``k`` learned context vectors followed by one or two learned word vectors."""

    def __init__(self, model: ClipModel, k: int) -> None:
        self.model, self.k = model, k
        self.embedding = token_embedding(model)
        self.templates = {
            n: model.tokenize([" ".join([PLACEHOLDER] * k + ["t", "o"][:n])])[0] for n in (1, 2)
        }  # [L]: SOT, k placeholders, the word slots, EOT, padding
        for n, tokens in self.templates.items():
            ids = tokens.tolist()
            if ids[1 : k + 1] != [ids[1]] * k or len(set(ids[1 : k + n + 2])) != n + 2:
                raise ValueError(
                    "the tokenizer does not give one token per placeholder word; DBOM cannot place its prompts"
                )

    def words(self, texts: list[str]) -> Tensor:
        """[N, width]: each text's mean token embedding (a learned word's starting value)."""
        tokens = self.model.tokenize(texts).to(self.embedding.weight.device)
        with torch.no_grad():
            rows = self.embedding(tokens)  # [N, L, width]
        keep = torch.zeros_like(tokens, dtype=torch.bool)
        for i, ids in enumerate(tokens.tolist()):
            end = ids.index(max(ids))  # the end-of-text token has the largest id
            keep[i, 1:end] = True
        return (rows * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)

    def encode(self, context: Tensor, first: Tensor, second: Tensor | None = None) -> Tensor:
        """[N, embed]: normalised text features of N prompts "context, first[i] (, second[i])"."""
        n = len(first)
        tokens = self.templates[1 if second is None else 2].to(first.device).expand(n, -1)
        k = self.k

        def hook(_module: nn.Module, _args: tuple, out: Tensor) -> Tensor:
            out = out.clone()
            out[:, 1 : k + 1] = context.to(out.dtype)
            out[:, k + 1] = first.to(out.dtype)
            if second is not None:
                out[:, k + 2] = second.to(out.dtype)
            return out

        handle = self.embedding.register_forward_hook(hook)
        try:
            return self.model.encode_text(tokens)
        finally:
            handle.remove()
