"""Cluster maps: the bookkeeping matches the model's own clusters, the drawn colours follow the assignments (in the
quick picture pixel for pixel), and the example script writes PNGs of the expected size from saved models, with or
without an image processor."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, tiny_config
from PIL import Image

import clustr_hf
from clustr_hf import ClusTRForImageClassification, ClusTRModel
from clustr_hf.visualization import (
    CAPTION_HEIGHT,
    HEADING_HEIGHT,
    LEGEND_HEIGHT,
    MAX_MARKER_RADIUS,
    MIN_PANEL_WIDTH,
    PANEL_GAP,
    centre_pixels,
    cluster_colours,
    cluster_maps,
    cluster_maps_from_outputs,
    cluster_overlay,
    distinct_colours,
    draw_cluster_grid,
    find_block,
    plot_cluster_grid,
    plot_cluster_map,
    token_pixels,
)


REPO = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (96, 128)  # not square, so rows and columns cannot be swapped unnoticed
EXPECTED_BLOCKS = [(1, 0), (2, 0), (2, 1), (3, 0)]  # tiny_config: depths 1, 2, 1, 1; stage 4 is not clustered


def _example_script():
    spec = importlib.util.spec_from_file_location("visualize_clusters", REPO / "examples" / "visualize_clusters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _example_script()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return ClusTRForImageClassification(tiny_config()).eval()


@pytest.fixture(scope="module")
def maps(classifier):
    return cluster_maps(classifier, torch.stack([photo("astronaut", PHOTO_SIZE), photo("coffee", PHOTO_SIZE)]))


def test_cluster_maps_are_the_models_own_clusters(classifier, maps):
    pixel_values = torch.stack([photo("astronaut", PHOTO_SIZE), photo("coffee", PHOTO_SIZE)])
    outputs = classifier.clustr(pixel_values, output_cluster_assignments=True, output_hidden_states=True)
    assert [(clusters.stage, clusters.block) for clusters in maps] == EXPECTED_BLOCKS
    for clusters, assignments, centres in zip(maps, outputs.cluster_assignments, outputs.cluster_centres):
        height, width = clusters.grid
        assert (height, width) == tuple(outputs.hidden_states[clusters.stage - 1].shape[-2:])
        assert clusters.grid == {1: (24, 32), 2: (12, 16), 3: (6, 8)}[clusters.stage]  # the conv formula, by hand
        ratio = classifier.config.cluster_reduction_ratios[clusters.stage - 1]
        assert clusters.counts == (height * width // ratio**2, 4 * (height * width // ratio**2))
        assert clusters.scale_names == ("coarse", "fine")
        assert torch.equal(clusters.assignments.flatten(2), assignments)
        assert torch.equal(clusters.centres[..., 0] * width + clusters.centres[..., 1], centres)
        for image in range(2):
            for scale, count in enumerate(clusters.counts):
                rows, cols = clusters.centres[image, :count].T
                assert torch.equal(clusters.assignments[image, scale, rows, cols], torch.arange(count))
                assert set(clusters.assignments[image, scale].unique().tolist()) == set(range(count))
        assert not torch.equal(clusters.assignments[0], clusters.assignments[1])  # two photos, two clusterings


def test_cluster_maps_from_outputs_of_the_classifiers_forward_are_cluster_maps(classifier, maps):
    pixel_values = torch.stack([photo("astronaut", PHOTO_SIZE), photo("coffee", PHOTO_SIZE)])
    with torch.no_grad():
        outputs = classifier(pixel_values, output_hidden_states=True, output_cluster_assignments=True)
    from_outputs = cluster_maps_from_outputs(classifier.config, outputs)
    assert [(clusters.stage, clusters.block, clusters.grid, clusters.counts) for clusters in from_outputs] == [
        (clusters.stage, clusters.block, clusters.grid, clusters.counts) for clusters in maps]
    for ours, theirs in zip(from_outputs, maps):
        assert torch.equal(ours.assignments, theirs.assignments) and torch.equal(ours.centres, theirs.centres)
    with pytest.raises(ValueError, match="output_hidden_states=True and output_cluster_assignments=True"):
        cluster_maps_from_outputs(classifier.config, classifier(pixel_values, output_hidden_states=True))


def test_cluster_maps_use_inference_mode_and_restore_training(maps):
    torch.manual_seed(0)
    model = ClusTRModel(tiny_config(drop_path_rate=0.5))
    pixel_values = torch.stack([photo("astronaut", PHOTO_SIZE), photo("coffee", PHOTO_SIZE)])
    first, second = cluster_maps(model, pixel_values), cluster_maps(model, pixel_values)
    assert model.training
    assert all(torch.equal(a.assignments, b.assignments) for a, b in zip(first, second))  # no random drop path
    with pytest.raises(TypeError, match="ClusTR model"):
        cluster_maps(torch.nn.Linear(2, 2), pixel_values)


def test_find_block_names_the_valid_choices(maps):
    assert find_block(maps, 2, 1) is maps[2]
    with pytest.raises(ValueError, match=r"Stage 4 has no clustered blocks .* clustered stages are 1, 2, 3"):
        find_block(maps, 4, 0)
    with pytest.raises(ValueError, match=r"Stage 7 has no clustered blocks"):
        find_block(maps, 7, 0)
    with pytest.raises(ValueError, match=r"Stage 2 has blocks 0 to 1 .* not block 2"):
        find_block(maps, 2, 2)
    with pytest.raises(ValueError, match="scales are coarse, fine"):
        maps[0].scale_index("medium")


def _oklab_distances(colours):
    _, lab = distinct_colours(len(colours))
    palette, _ = distinct_colours(len(colours))
    index = [int(np.flatnonzero((palette == colour).all(axis=1))[0]) for colour in colours]
    return np.linalg.norm(lab[index][:, None] - lab[index][None], axis=-1)


def test_palette_colours_are_distinct_and_spread():
    rgb, lab = distinct_colours(400)
    assert len(np.unique(rgb, axis=0)) == 400
    assert np.array_equal(distinct_colours(30)[0], rgb[:30])  # any prefix is the smaller palette
    distances = np.linalg.norm(lab[:49, None] - lab[None, :49], axis=-1) + np.eye(49)
    assert distances.min() > 0.06  # well above OKLab's just-noticeable difference of about 0.02


def test_touching_clusters_get_more_different_colours_than_average(maps):
    for clusters in maps[:3]:
        labels = clusters.assignments[0, 1].numpy()
        colours = cluster_colours(labels, clusters.counts[1])
        distances = _oklab_distances(colours)
        pairs = np.concatenate([np.stack((labels[:, :-1], labels[:, 1:]), -1).reshape(-1, 2),
                                np.stack((labels[:-1], labels[1:]), -1).reshape(-1, 2)])
        pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
        touching = distances[pairs[:, 0], pairs[:, 1]].mean()
        everything = distances[np.triu_indices(len(colours), 1)].mean()
        assert touching > 1.1 * everything


@pytest.mark.parametrize("image_index", [0, 1])
def test_overlay_colours_every_token_by_its_cluster(maps, image_index):
    for clusters in maps:
        height, width = clusters.grid
        image = np.zeros((height * 6, width * 6, 3), dtype=np.uint8)  # 6 x 6 pixels per token
        for scale, count in enumerate(clusters.counts):
            labels = clusters.assignments[image_index, scale].numpy()
            colours = cluster_colours(labels, count)
            overlay = cluster_overlay(image, labels, colours, opacity=1.0, boundary_colour=(0, 0, 0))
            cell_centres = overlay[3::6, 3::6]
            assert np.array_equal(cell_centres, colours[labels])
            assert len(np.unique(colours, axis=0)) == count  # different clusters, different colours
            right_differs = labels[:, :-1] != labels[:, 1:]
            assert np.array_equal(overlay[3::6, 5:-1:6].any(-1), ~right_differs)  # boundary on the last column
            assert np.array_equal(overlay[3::6, 4::6][:, :-1].any(-1), np.ones_like(right_differs))


def test_overlay_blends_with_the_photo():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    colours = np.array([[200, 0, 50], [0, 0, 0]], dtype=np.uint8)
    overlay = cluster_overlay(image, np.zeros((2, 2), dtype=int), colours, opacity=0.25, boundary_colour=None)
    assert (overlay == np.array([125, 75, 88])).all()
    with pytest.raises(ValueError, match="uint8"):
        cluster_overlay(image.astype(float), np.zeros((2, 2), dtype=int), colours)


def check_grid_picture(picture, image, blocks, image_index=0, opacity=0.6):
    """Assert that `picture` (draw_cluster_grid's, as an RGB array) shows `blocks` over `image` (the enlarged image,
    one panel per scale), with an oracle built cell by cell: every pixel of a token's cell is the image's pixel
    blended with the colour of the token's cluster, except the cell's last column (row), which is white where the
    token to the right (below) is in another cluster; a white dot lies on every cluster centre."""
    height, width = image.shape[:2]
    columns = len(blocks[0].counts)
    assert picture.shape == (HEADING_HEIGHT + len(blocks) * (CAPTION_HEIGHT + height + PANEL_GAP),
                             PANEL_GAP + columns * (width + PANEL_GAP), 3)
    assert (picture[:HEADING_HEIGHT] < 100).any()  # the heading's text
    for row, clusters in enumerate(blocks):
        grid_height, grid_width = clusters.grid
        cell_height, cell_width = height // grid_height, width // grid_width
        assert (cell_height * grid_height, cell_width * grid_width) == (height, width)
        for column in range(columns):
            top = HEADING_HEIGHT + row * (CAPTION_HEIGHT + height + PANEL_GAP) + CAPTION_HEIGHT
            left = PANEL_GAP + column * (width + PANEL_GAP)
            assert (picture[top - CAPTION_HEIGHT:top, left:left + width] < 100).any()  # the caption's text
            panel = picture[top:top + height, left:left + width]
            labels = clusters.assignments[image_index, column].numpy()
            colours = cluster_colours(labels, clusters.counts[column])
            expected = np.empty_like(image)
            for token_row in range(grid_height):
                for token_col in range(grid_width):
                    cell = (slice(token_row * cell_height, (token_row + 1) * cell_height),
                            slice(token_col * cell_width, (token_col + 1) * cell_width))
                    label = labels[token_row, token_col]
                    expected[cell] = np.round((1 - opacity) * image[cell] + opacity * colours[label])
                    if token_col + 1 < grid_width and labels[token_row, token_col + 1] != label:
                        expected[cell[0], cell[1].stop - 1] = 255
                    if token_row + 1 < grid_height and labels[token_row + 1, token_col] != label:
                        expected[cell[0].stop - 1, cell[1]] = 255
            checked = np.ones((height, width), dtype=bool)
            rows_cols = clusters.centres[image_index, : clusters.counts[column]].numpy()
            for token_row, token_col in rows_cols:
                y, x = int((token_row + 0.5) * cell_height), int((token_col + 0.5) * cell_width)
                assert (panel[y, x] == 255).all()  # the centre's dot
                reach = MAX_MARKER_RADIUS + 1
                checked[max(0, y - reach):y + reach + 1, max(0, x - reach):x + reach + 1] = False
            np.testing.assert_array_equal(panel[checked], expected[checked])


@pytest.mark.parametrize("image_index", [0, 1])
@pytest.mark.parametrize("size, enlargement", [(PHOTO_SIZE, 1), ((48, 64), 2)])
def test_grid_picture_colours_every_token_by_its_cluster(maps, image_index, size, enlargement):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    picture = draw_cluster_grid(image, maps, image_index=image_index, note="b0, untrained")
    assert picture.mode == "RGB"
    enlarged = image.repeat(enlargement, axis=0).repeat(enlargement, axis=1)  # small images: every pixel a square
    check_grid_picture(np.asarray(picture), enlarged, maps, image_index)


def test_legend_names_stage_block_scale_count_and_note(maps):
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    figure = plot_cluster_map(image, maps[2], ["coarse"], note="b0, untrained")
    legend = next(ax.get_legend() for ax in figure.axes if ax.get_legend())
    assert legend.get_title().get_text() == "stage 2 · block 1 · coarse scale\nb0, untrained"
    assert [text.get_text() for text in legend.get_texts()] == [f"{maps[2].counts[0]} clusters", "centres"]


def test_imports_without_matplotlib_and_says_how_to_install_it(monkeypatch):
    for name in {"matplotlib", *(name for name in sys.modules if name.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)  # as if matplotlib were not installed
    monkeypatch.delitem(sys.modules, "clustr_hf.visualization")
    monkeypatch.setattr(clustr_hf, "visualization", None)
    fresh = importlib.import_module("clustr_hf.visualization")
    labels = np.array([[0, 1], [1, 1]])
    assert fresh.cluster_overlay(np.zeros((4, 4, 3), dtype=np.uint8), labels, fresh.cluster_colours(labels)).shape == (
        4, 4, 3)
    with pytest.raises(ImportError, match=r"pip install matplotlib \(in a clone of clustr_hf: pip install -e "):
        fresh.plot_cluster_map(np.zeros((8, 8, 3), dtype=np.uint8), None)


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_script_draws_the_models_clusters_from_a_saved_folder(script, classifier, tmp_path):
    folder = tmp_path / "model"
    classifier.save_pretrained(folder)
    out = tmp_path / "clusters.png"
    script.main(["coffee", "--model", str(folder), "--size", "48", "--stage", "2", "--block", "1", "--out", str(out)])

    pixel_values = script.preprocess(script.load_image("coffee"), None, 48)
    assert pixel_values.shape == (1, 3, 48, 72)  # coffee is 400 x 600: shorter side to 48, aspect kept
    image = script.display_image(pixel_values, None, zoom=2)
    clusters = find_block(cluster_maps(classifier, pixel_values), 2, 1)
    assert clusters.grid == (6, 9)
    png = _png(out)
    height, width = image.shape[:2]
    panel_width = max(width, MIN_PANEL_WIDTH)
    assert png.shape == (height + LEGEND_HEIGHT, 2 * panel_width, 3)
    grid = plot_cluster_grid(image, cluster_maps(classifier, pixel_values), note="model")
    assert _png(tmp_path / "clusters_grid.png").shape[:2] == tuple(np.round(grid.get_size_inches()[::-1] * grid.dpi))
    rows, cols = token_pixels(clusters.grid, (height, width))
    for scale, count in enumerate(clusters.counts):
        labels = clusters.assignments[0, scale].numpy()
        colours = cluster_colours(labels, count)
        expected = cluster_overlay(image, labels, colours)
        panel = png[:height, scale * panel_width: scale * panel_width + width]
        centre_x, centre_y = centre_pixels(clusters, scale, (height, width)).T
        marked = np.zeros(clusters.grid, dtype=bool)
        marked[rows[centre_y.astype(int)], cols[centre_x.astype(int)]] = True
        cells_y, cells_x = (np.arange(n) * 16 + 8 for n in clusters.grid)  # 16 x 16 pixels per token
        drawn = panel[cells_y[:, None], cells_x[None, :]]
        assert np.array_equal(drawn[~marked], expected[cells_y[:, None], cells_x[None, :]][~marked])
        assert (drawn[marked] == 255).all()  # the white centre markers
        different_y, different_x = np.nonzero(np.any(panel != expected, axis=-1))
        to_nearest_centre = np.hypot(different_x[:, None] + 0.5 - centre_x, different_y[:, None] + 0.5 - centre_y)
        assert (to_nearest_centre.min(axis=1) < 8).all()  # nothing but the markers (at most 12 pixels wide) differs


def test_script_uses_the_folders_image_processor(script, classifier, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    classifier.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "size": {"height": 40, "width": 56}, "do_resize": True,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }))
    out = tmp_path / "coarse.png"
    script.main(["astronaut", "--model", str(folder), "--size", "processor", "--scale", "coarse", "--zoom", "3",
                 "--out", str(out)])
    assert _png(out).shape == (40 * 3 + LEGEND_HEIGHT, MIN_PANEL_WIDTH, 3)
    # by default 224 pixels a side, not the processor's 40 x 56, where the clusters would have few tokens to show
    fed = []
    monkeypatch.setattr(script, "cluster_maps", lambda model, pixel_values: fed.append(pixel_values.shape) or [])
    with pytest.raises(SystemExit, match="clusters in no stage"):  # stops before drawing
        script.main(["astronaut", "--model", str(folder), "--out", str(out)])
    assert fed == [(1, 3, 224, 224)]
    model, processor, _ = script.load_model(str(folder))
    pixel_values = script.preprocess(script.load_image("astronaut"), processor, None)  # the processor's 40 x 56
    image = script.display_image(pixel_values, processor, zoom=1)
    plain = np.asarray(script.load_image("astronaut").resize((56, 40), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(image.astype(int) - plain).mean() < 8  # the normalisation was undone
    resized = script.preprocess(script.load_image("astronaut"), processor, 48)  # 512 x 512: now 48 x 48, no crop
    expected = np.asarray(script.load_image("astronaut").resize((48, 48), Image.Resampling.BICUBIC)) / 255
    assert torch.allclose(resized[0], torch.from_numpy((expected - 0.5) / 0.5).permute(2, 0, 1).float(), atol=1e-5)


def test_script_variant_is_labelled_untrained(script):
    model, processor, note = script.load_model("b1")
    assert processor is None and "untrained" in note
    assert list(model.config.depths) == [1, 2, 6, 1] and isinstance(model, ClusTRModel)


@pytest.mark.parametrize("argv, message", [
    (["no_such_photo.png", "--model", "b0"], "neither a file nor a scikit-image sample photo"),
    (["astronaut", "--model", "b9"], "neither a model folder nor a variant name"),
    (["astronaut", "--model", "b0", "--size", "64", "--stage", "4"], "Stage 4 has no clustered blocks"),
    (["astronaut", "--model", "b0", "--size", "64", "--stage", "1", "--block", "2"], "Stage 1 has blocks 0 to 1"),
])
def test_script_errors_name_the_problem(script, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        script.main(argv + ["--out", str(tmp_path / "out.png")])


def test_script_help_keeps_its_example_lines_and_documents_every_flag(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    listed = capsys.readouterr().out
    assert "--scale coarse \\\n        --out clusters.png" in listed  # the example's continuation line is kept
    assert "--scale {coarse,fine,both}\n                        the cluster scale to draw" in listed
    assert "pip install -e \".[viz]\"" in listed and "clustr_hf[viz]" not in listed


def test_script_rejects_a_folder_without_config(script, tmp_path):
    with pytest.raises(SystemExit, match="has no config.json"):
        script.main(["astronaut", "--model", str(tmp_path), "--out", str(tmp_path / "out.png")])
