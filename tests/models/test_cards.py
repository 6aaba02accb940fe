"""Every registered model has a complete card, and what the card says is true of the model it builds."""

import pytest
import torch
from torch import nn

from rwkvlab.models import ModelCard, create_model, list_models, model_card, model_cards, register_model
from rwkvlab.report.comparison import COMPARISON_TABLES
from rwkvlab.report.tables import paper_table


@pytest.mark.parametrize("name", list_models())
def test_the_card_describes_the_built_model(name):
    card = model_card(name)
    assert card.label and card.build
    with torch.device("meta"):
        net = create_model(name)
    assert getattr(net, "spatial_dims", 2) == card.spatial_dims
    if card.task == "segmentation":
        assert net.size_divisor == card.size_divisor
    if card.pretrain_encoder is not None:
        assert model_card(card.pretrain_encoder).task == "classification"
        with torch.device("meta"):
            encoder = create_model(card.pretrain_encoder)
        # the encoder's weights load into the model's encoder: the same parameter names and shapes, head aside
        body = {k: v.shape for k, v in encoder.state_dict().items() if not k.startswith("head")}
        inner = {k.removeprefix("encoder."): v.shape for k, v in net.state_dict().items() if k.startswith("encoder.")}
        assert body and body.items() <= inner.items()


@pytest.mark.parametrize("name", list_models())
def test_paper_rows_name_rows_of_the_published_tables(name):
    for table, method in model_card(name).paper_rows.items():
        assert table in COMPARISON_TABLES
        assert method in set(paper_table(COMPARISON_TABLES[table].csv)["method"])


def test_labels_are_unique_and_every_paper_count_is_a_setting():
    labels = [c.label for c in model_cards().values()]
    assert len(labels) == len(set(labels))
    for name, card in model_cards().items():
        for count in card.paper_counts:
            assert count.size > 0 and count.num_classes >= 0
            assert (count.num_classes == 0) == (card.task == "classification")


def test_a_model_registers_only_with_a_valid_card():
    with pytest.raises(TypeError, match=r"@register_model\(ModelCard"):
        register_model(lambda **_: nn.Identity())
    with pytest.raises(ValueError, match="label and a build"):
        ModelCard("", "something")
    with pytest.raises(ValueError, match="one per axis"):
        ModelCard("X", "x", spatial_dims=3, size_divisor=16)
    with pytest.raises(ValueError, match="an int for a 2D model"):
        ModelCard("X", "x", size_divisor=(16, 16, 16))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        model_card("nope")
