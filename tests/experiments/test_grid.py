from experiments.grid import ARMS, DCQ, FULL, INTERCLASS_THRESHOLD, PFC_01, QUICK, SOFTMAX, filtered, grid_cells


def test_every_claim_has_its_arms_on_the_right_data():
    assert {SOFTMAX, PFC_01, DCQ} <= set(ARMS["clean"])
    noisy = set(ARMS["noisy"])
    for rate in (1.0, 0.3, 0.1):
        plain = [arm for arm in noisy if arm.method == "pfc" and arm.options["sample_rate"] == rate]
        assert sorted(arm.interclass_threshold is None for arm in plain) == [False, True]
    assert DCQ in noisy


def test_cells_cover_every_arm_and_seed_once_with_unique_names():
    for scale in (FULL, QUICK):
        cells = grid_cells(scale)
        assert len(cells) == sum(len(arms) for arms in ARMS.values()) * len(scale.seeds)
        assert len({cell.name for cell in cells}) == len(cells)
        assert [cell.seed for cell in cells] == sorted(cell.seed for cell in cells)  # whole seeds finish first


def test_arm_overrides_set_only_their_method_options():
    assert DCQ.overrides() == {"method": "dcq", "interclass_threshold": None, "queue_size": 0.1}
    assert filtered(PFC_01).overrides() == {"method": "pfc", "interclass_threshold": INTERCLASS_THRESHOLD,
                                            "sample_rate": 0.1}


def test_every_arm_is_a_valid_config_of_its_method():
    from core.config import TrainConfig

    for arms in ARMS.values():
        for arm in arms:
            config = TrainConfig().replace(**arm.overrides()).validate()
            assert config.method == arm.method
            assert all(getattr(config.options, key) == value for key, value in arm.options.items())


def test_full_scale_samples_negatives_beyond_a_batch_of_positives():
    # at rate 0.1 the sampled classes must outnumber a batch's distinct positives, or
    # Partial FC 0.1 degenerates to "positives only" and the comparison says nothing
    for scale in (FULL, QUICK):
        assert 0.1 * scale.identities > scale.batch_size
