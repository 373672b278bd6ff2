"""Few-shot text classification: intent (BANKING77, CLINC150) and relation (FewRel) datasets.

Loaders read the published files; class splits give disjoint meta-train / meta-validation /
meta-test classes; encoders are either small trainable models over word ids or a frozen
pretrained sentence encoder whose outputs are cached on disk; :class:`ClassGroups` feeds the
episodic sampler; prototype and linear-probe baselines score episodes of embeddings.

Typical use with the trainable encoder::

    data = load_text_dataset("banking77", root)
    split = default_class_split(data, seed=0)
    tokenizer = WordTokenizer.fit(data.texts_of(split.train), max_length=32)
    ids = tokenizer.encode(data.texts)
    sampler = split_class_groups(data, split, "train", ids, min_examples=20).sampler(5, 5, 15)
    model = BagOfEmbeddingsClassifier(tokenizer.vocab_size, num_classes=5)

``transformers`` is imported only when a pretrained encoder is built (``pip install
"mamlkit[text]"``).
"""

from mamlkit.text.banking77 import load_banking77
from mamlkit.text.baselines import linear_probe_accuracy, prototype_accuracy
from mamlkit.text.clinc150 import load_clinc150
from mamlkit.text.data import TextClassificationData
from mamlkit.text.embedding_cache import embed_texts, hidden_states_for_texts, texts_checksum
from mamlkit.text.encoders import BagOfEmbeddingsClassifier, TextCNNClassifier
from mamlkit.text.episodes import ClassGroups, group_by_class, split_class_groups
from mamlkit.text.fewrel import load_fewrel, mark_entities
from mamlkit.text.last_layers import BertLayer, LastLayersClassifier, last_layers_from_pretrained
from mamlkit.text.pretrained import PretrainedSentenceEncoder, bundled_model_dir
from mamlkit.text.registry import TEXT_DATASETS, load_text_dataset
from mamlkit.text.splits import (
    DEFAULT_SPLIT_SIZES,
    ClassSplit,
    default_class_split,
    split_by_groups,
    split_classes,
)
from mamlkit.text.tokenizer import PAD_ID, UNK_ID, WordTokenizer

__all__ = [
    "DEFAULT_SPLIT_SIZES",
    "PAD_ID",
    "TEXT_DATASETS",
    "UNK_ID",
    "BagOfEmbeddingsClassifier",
    "BertLayer",
    "ClassGroups",
    "ClassSplit",
    "LastLayersClassifier",
    "PretrainedSentenceEncoder",
    "TextCNNClassifier",
    "TextClassificationData",
    "WordTokenizer",
    "bundled_model_dir",
    "default_class_split",
    "embed_texts",
    "group_by_class",
    "hidden_states_for_texts",
    "last_layers_from_pretrained",
    "linear_probe_accuracy",
    "load_banking77",
    "load_clinc150",
    "load_fewrel",
    "load_text_dataset",
    "mark_entities",
    "prototype_accuracy",
    "split_by_groups",
    "split_class_groups",
    "split_classes",
    "texts_checksum",
]
