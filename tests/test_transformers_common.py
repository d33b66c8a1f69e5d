"""transformers' own shared tests on ClusTR: ModelTesterMixin, ConfigTester, BackboneTesterMixin and
ImageProcessingTestMixin of the installed transformers version, modelled on PvtV2's test files.

`make install` fetches the shared test files into tests/transformers_tests/ (see fetch.py there). Every override of a
mixin test says in its first line why ClusTR differs.
"""

import copy
import pickle
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import transformers
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_BACKBONE_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)
from transformers.testing_utils import slow, torch_device

from clustr_hf import (
    ClusTRBackbone,
    ClusTRConfig,
    ClusTRForImageClassification,
    ClusTRImageProcessor,
    ClusTRImageProcessorPil,
    ClusTRModel,
    cluster_counts,
)


FETCHED = Path(__file__).parent / "transformers_tests"
if not (FETCHED / "VERSION").is_file() or (FETCHED / "VERSION").read_text().strip() != transformers.__version__:
    raise ImportError(
        f"transformers {transformers.__version__}'s shared test files are not in {FETCHED}; run `make install` "
        f"(or `python {FETCHED / 'fetch.py'}`) to fetch them from its source distribution."
    )
sys.path.insert(0, str(FETCHED / "utils"))  # test_image_processing_common imports fetch_hub_objects_for_ci from there

from transformers_tests.test_backbone_common import BackboneTesterMixin  # noqa: E402
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
)
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402


def list_in_auto_mappings(test_case: unittest.TestCase) -> None:
    """Name ClusTR's classes in transformers' Auto mappings while `test_case` runs, as a model in the library is: the
    shared tests read there which classes are base models, backbones or classifiers (that take labels)."""
    for names, class_name in (
        (MODEL_MAPPING_NAMES, "ClusTRModel"),
        (MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "ClusTRForImageClassification"),
        (MODEL_FOR_BACKBONE_MAPPING_NAMES, "ClusTRBackbone"),
    ):
        patcher = mock.patch.dict(names, {ClusTRConfig.model_type: class_name})
        patcher.start()
        test_case.addCleanup(patcher.stop)


class ClusTRModelTester:
    """A tiny ClusTR (32x32 images, widths 8-32) with every stage but the last clustered."""

    def __init__(self, parent, batch_size=2, image_size=32, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = 3
        self.hidden_sizes = [8, 16, 24, 32]
        self.num_attention_heads = [1, 2, 3, 4]
        self.depths = [1, 1, 1, 1]
        self.strides = [4, 2, 2, 2]
        self.num_labels = num_labels
        self.is_training = is_training
        self.out_features = ["stage1", "stage2", "stage3", "stage4"]

    def get_config(self, **overrides):
        settings = dict(
            num_channels=self.num_channels, hidden_sizes=self.hidden_sizes, num_attention_heads=self.num_attention_heads,
            depths=self.depths, mlp_ratios=[2, 2, 2, 2], strides=self.strides, num_labels=self.num_labels,
            out_features=self.out_features,
        )
        return ClusTRConfig(**{**settings, **overrides})

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def grid_sides(self) -> list[int]:
        """The side of each stage's square token grid (convolutions with padding k // 2)."""
        sides, side = [], self.image_size
        for stride in self.strides:
            side = (side - 1) // stride + 1
            sides.append(side)
        return sides

    def attention_shapes(self, config) -> list[tuple[int, ...]]:
        """The (heads, queries, keys) of each block's attention map: keys are the clusters of all scales, or all tokens."""
        shapes = []
        for side, depth, heads, ratio in zip(
            self.grid_sides(), config.depths, config.num_attention_heads, config.cluster_reduction_ratios
        ):
            tokens = side * side
            keys = sum(cluster_counts(tokens, ratio, config.cluster_scales)) if ratio > 1 else tokens
            shapes += [(heads, tokens, keys)] * depth
        return shapes


class ClusTRModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ClusTRModel, ClusTRForImageClassification)
    test_resize_embeddings = False

    def setUp(self):
        list_in_auto_mappings(self)
        self.model_tester = ClusTRModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=ClusTRConfig, has_text_modality=False, hidden_sizes=[8, 16, 24, 32],
            num_attention_heads=[1, 2, 3, 4],
            common_properties=["hidden_sizes", "num_attention_heads", "depths", "cluster_reduction_ratios"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        """ClusTR returns one (B, C, H, W) map per stage (as PvtV2), not a (B, N, C) sequence per layer plus one."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        expected = [
            [self.model_tester.batch_size, width, side, side]
            for width, side in zip(self.model_tester.hidden_sizes, self.model_tester.grid_sides())
        ]
        for model_class in self.all_model_classes:
            for from_config in (False, True):
                model_config = copy.deepcopy(config)
                model_config.output_hidden_states = from_config
                model = model_class(model_config).to(torch_device).eval()
                inputs = {**inputs_dict} if from_config else {**inputs_dict, "output_hidden_states": True}
                with torch.no_grad():
                    hidden_states = model(**inputs).hidden_states
                self.assertEqual([list(h.shape) for h in hidden_states], expected)

    def test_attention_outputs(self):
        """ClusTR's attention maps differ per block: a clustered block attends to the clusters of all its scales."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        expected = [[self.model_tester.batch_size, *shape] for shape in self.model_tester.attention_shapes(config)]
        clustered = [ratio > 1 for ratio, depth in zip(config.cluster_reduction_ratios, config.depths) for _ in range(depth)]
        for model_class in self.all_model_classes:
            for from_config in (False, True):
                model = model_class._from_config(copy.deepcopy(config), attn_implementation="eager")
                model.config.output_attentions = from_config
                model.to(torch_device).eval()
                inputs = {**inputs_dict} if from_config else {**inputs_dict, "output_attentions": True}
                with torch.no_grad():
                    attentions = model(**inputs).attentions
                self.assertEqual([list(a.shape) for a in attentions], expected)
                for attention, is_clustered in zip(attentions, clustered):  # each scale's part sums to one
                    scales = len(config.cluster_scales) if is_clustered else 1
                    torch.testing.assert_close(attention.sum(-1), torch.full(attention.shape[:-1], float(scales)))

    def test_model_get_set_embeddings(self):
        """ClusTR embeds pixels with a strided convolution (stage 1's patch embedding), not an nn.Embedding of ids."""
        for model_class in self.all_model_classes:
            model = model_class(self.model_tester.get_config())
            self.assertIs(model.get_input_embeddings(), model.base_model.encoder.stages[0].patch_embeddings.proj)
            self.assertIsNone(model.get_output_embeddings())


class ClusTRBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (ClusTRBackbone,)
    config_class = ClusTRConfig

    def setUp(self):
        list_in_auto_mappings(self)
        self.model_tester = ClusTRModelTester(self)

    def test_config(self):
        """ClusTR has no stem: its stages are stage1..stage4 (as PvtV2's), where the mixin expects a "stem" first."""
        config = ClusTRConfig()
        self.assertEqual(config.stage_names, ["stage1", "stage2", "stage3", "stage4"])
        self.assertEqual(config.out_features, ["stage4"])
        self.assertEqual(config.out_indices, [3])
        for out_features, out_indices in ((["stage1", "stage2"], [0, 1]), (["stage2", "stage4"], [1, 3])):
            for given in ({"out_features": out_features}, {"out_indices": out_indices}, {"out_features": out_features,
                                                                                          "out_indices": out_indices}):
                config = ClusTRConfig(**given)
                self.assertEqual((config.out_features, config.out_indices), (out_features, out_indices))
        with self.assertRaises(ValueError):
            ClusTRConfig(out_features=["stage1", "stage2"], out_indices=[0, 2])


class ClusTRImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"shortest_edge": 20})
        kwargs.setdefault("crop_pct", 0.875)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        """ClusTR's two backends (transformers finds a model's classes from the folder of its test file)."""
        return {"torchvision": ClusTRImageProcessor, "pil": ClusTRImageProcessorPil}

    def expected_output_image_shape(self, images):
        return self.num_channels, self.size["shortest_edge"], self.size["shortest_edge"]


PIL_BACKEND_WITHOUT_TORCHVISION = """
import pickle
import sys

sys.modules["torchvision"] = None  # `import torchvision` now fails
from transformers import AutoImageProcessor

folder = sys.argv[1]
processor = AutoImageProcessor.from_pretrained(folder, backend="pil", trust_remote_code=True)
with open(f"{folder}/images.pkl", "rb") as file:
    images = pickle.load(file)
with open(f"{folder}/pixels.pkl", "wb") as file:
    pickle.dump((type(processor).__name__, processor(images, return_tensors="np").pixel_values), file)
"""


class ClusTRImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = ClusTRImageProcessingTester

    @slow
    def test_pil_can_run_without_torchvision(self):
        """ClusTR's processors are remote code: the process without torchvision must pass trust_remote_code=True."""
        processor = ClusTRImageProcessorPil(**self.image_processor_dict)
        images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False)
        with tempfile.TemporaryDirectory() as folder:
            processor.save_pretrained(folder)
            with open(f"{folder}/images.pkl", "wb") as file:
                pickle.dump(images, file)
            completed = subprocess.run([sys.executable, "-c", PIL_BACKEND_WITHOUT_TORCHVISION, folder],
                                       capture_output=True, text=True)
            self.assertEqual(completed.returncode, 0, completed.stderr)
            with open(f"{folder}/pixels.pkl", "rb") as file:
                class_name, pixels = pickle.load(file)
        self.assertEqual(class_name, "ClusTRImageProcessorPil")
        np.testing.assert_array_equal(pixels, processor(images, return_tensors="np").pixel_values)
