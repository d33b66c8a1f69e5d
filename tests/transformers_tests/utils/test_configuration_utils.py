"""Stand-in for transformers' `tests/utils/test_configuration_utils.py`, which its sdist lacks.

`ConfigTester.check_config_arguments_init` builds a config from `config_common_kwargs` and checks that every one of
them comes back as given (`dtype` as `torch.float16`). These are the common `PreTrainedConfig` fields of
transformers 5, each set to a value other than its default.
"""

config_common_kwargs = {
    "output_hidden_states": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["ClusTRForImageClassification"],
    "id2label": {0: "cat", 1: "dog", 2: "bird"},
    "label2id": {"cat": 0, "dog": 1, "bird": 2},
    "problem_type": "multi_label_classification",
}
