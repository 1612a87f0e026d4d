"""The leader keeps every model's published split equal to what should serve, whoever changed the catalog: a model
registered or a production variant changed straight in the database (a CLI) reaches the routers without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelroll import catalog, production
from modelroll.artifacts import ArtifactStore
from tests.integration.controller_world import World
from tests.tiny_onnx import write_linear

pytestmark = pytest.mark.timeout(120)


def test_a_model_registered_in_the_database_is_published_at_the_leaders_next_look(world: World,
                                                                                 tmp_path: Path) -> None:
    leader = world.reconciler()
    assert leader.elector.poll() is not None
    assert leader.follow_catalog() == 0  # the first look only takes the marks
    assert leader.publish_desired_splits() == 1  # digits had no split yet: its production variant, fp32
    split = world.channel.get_splits()["digits"]
    assert dict(split.weights) == {"fp32": 100.0} and split.baseline == "fp32" and split.rollout_id is None
    with world.session_factory() as session, session.begin():
        catalog.register_model(session, ArtifactStore(tmp_path / "artifacts"), write_linear(tmp_path / "iris.onnx"),
                               "iris")
    assert leader.follow_catalog() == 1
    assert dict(world.channel.get_splits()["iris"].weights) == {"baseline": 100.0}
    assert leader.follow_catalog() == 0  # nothing changed since


def test_a_production_change_made_outside_the_api_is_republished(world: World) -> None:
    leader = world.reconciler()
    assert leader.elector.poll() is not None
    leader.tick()
    assert leader.follow_catalog() == 0
    before = world.channel.get_splits()["digits"].version
    with world.session_factory() as session, session.begin():
        model = production.model_row(session, "digits")
        int8 = production.rollback_target(session, model, to_variant="int8", to_revision=None)
        production.set_production(session, model, int8, action=production.ROLLBACK, actor="cli")
    assert leader.follow_catalog() == 1
    split = world.channel.get_splits()["digits"]
    assert dict(split.weights) == {"int8": 100.0} and split.version > before
    leader.tick()
    assert world.channel.get_splits()["digits"].version == split.version  # the tick agrees: nothing to publish


def test_a_follower_publishes_nothing(world: World, tmp_path: Path) -> None:
    follower = world.reconciler("not-leading")
    assert follower.follow_catalog() == 0 and not world.channel.get_splits()
