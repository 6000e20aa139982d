"""Stream V2 / V1 decoding of messages made here: typed arrays of 8/16/32 bits, bslz4 and lz4 compression, two
channels, the start message's pixel mask and saturation value, stray messages."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

pytest.importorskip("dectris.compression")

from cxlspeaks.sources import messages, stream1, stream2  # noqa: E402


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("compression", ["bslz4", "lz4", None])
def test_image_message_round_trips_two_channels(dtype, compression):
    rng = np.random.default_rng(0)
    t1 = rng.integers(0, np.iinfo(dtype).max, size=(48, 64)).astype(dtype)
    t2 = (t1 // 2).astype(dtype)
    event = stream2.parse_v2(stream2.image_message(3, 7, {"threshold_1": t1, "threshold_2": t2}, compression))
    assert isinstance(event, messages.Image) and (event.series_id, event.image_id) == (3, 7)
    assert event.channel("threshold_1").dtype == dtype
    assert np.array_equal(event.channel("threshold_1"), t1) and np.array_equal(event.channel("threshold_2"), t2)
    with pytest.raises(messages.StreamError, match="no channel 'difference'"):
        event.channel("difference")


def test_big_endian_typed_array_and_column_major_array():
    a = np.arange(12, dtype=">u2").reshape(3, 4)
    raw = cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0,
                       "data": {"threshold_1": cbor2.CBORTag(1040, [[3, 4], cbor2.CBORTag(65, a.T.tobytes())])}})
    assert np.array_equal(stream2.parse_v2(raw).channel("threshold_1"), a)


def test_start_message_mask_saturation_and_frame():
    mask = np.zeros((48, 64), np.uint32)
    mask[5, 6] = 1
    start = stream2.parse_v2(stream2.start_message(9, (48, 64), "uint16", 10, {"threshold_1": mask}, 1000, 8000.0,
                                                   0.2, (30.5, 20.5), 75e-6))
    info = start.info
    assert (info.series_id, info.shape, info.number_of_images, info.saturation_value) == (9, (48, 64), 10, 1000)
    assert info.photon_energy_ev == 8000.0 and info.clen_m == 0.2 and info.beam_center_px == (30.5, 20.5)
    good = info.static_good(np.ones((48, 64), bool), "threshold_1")
    counts = np.ones((48, 64), np.uint16)
    counts[1, 1], counts[2, 2] = 1000, 65535
    frame = messages.make_frame(info, 4, counts, good)
    assert not frame.good[5, 6] and not frame.good[2, 2] and frame.saturated[1, 1] and frame.n_saturated == 1
    assert frame.event == "9 //4" and frame.metadata["image_id"] == 4 and frame.metadata["clen_m"] == 0.2


def test_stream1_header_image_and_end():
    info = messages.SeriesInfo(series_id=5, shape=(48, 64), number_of_images=3, saturation_value=500,
                              photon_energy_ev=7000.0, clen_m=0.1, beam_center_px=(1.0, 2.0), pixel_size_m=75e-6,
                              pixel_mask={"threshold_1": np.eye(48, 64, dtype=np.uint32)})
    for detail in ("all", "basic", "none"):
        got = stream1.parse_v1(stream1.header_message(info, detail)).info
        assert got.series_id == 5
        if detail != "none":
            assert got.shape == (48, 64) and got.saturation_value == 500 and got.clen_m == 0.1
        assert ("threshold_1" in got.pixel_mask) == (detail == "all")
    a = np.random.default_rng(1).integers(0, 100, size=(48, 64)).astype(np.uint32)
    for compression in ("bslz4", None):
        event = stream1.parse_v1(stream1.image_parts(5, 2, a, compression))
        assert event.image_id == 2 and np.array_equal(event.channel("threshold_1"), a)
    assert stream1.parse_v1(stream1.end_parts(5)) == messages.End(5)


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", cbor2.dumps([1, 2]), cbor2.dumps({"type": "image"}),
                                 cbor2.dumps({"type": "image", "series_id": 1, "image_id": 2,
                                              "data": {"threshold_1": cbor2.CBORTag(40, [[9, 9], cbor2.CBORTag(
                                                  70, cbor2.CBORTag(56500, ["bslz4", 4, b"junk"]))])}})])
def test_stray_or_partial_messages_never_raise(raw):
    event = stream2.parse_v2(raw)
    if isinstance(event, messages.Image):          # a corrupt payload shows when the channel is decoded
        with pytest.raises(messages.StreamError):
            event.channel("threshold_1")
    else:
        assert isinstance(event, messages.Stray)
    assert isinstance(stream1.parse_v1([b"{\"htype\": \"dimage-1.0\"}"]), messages.Stray)


def test_replay_message_from_the_encoded_data_map_is_the_image_message():
    from cxlspeaks.live.replay import image_bytes

    frame = np.arange(12, dtype=np.uint32).reshape(3, 4)
    data = cbor2.dumps({"threshold_1": stream2.encode_array(frame, "bslz4")})
    for image_id in (0, 23, 300000):
        assert image_bytes(7, image_id, data) == stream2.image_message(7, image_id, {"threshold_1": frame})
