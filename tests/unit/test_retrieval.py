"""Retrieval database: label mapping, corpus parsing, FAISS indexes, persistence, seed cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from models.encoders import tiny_text_encoder
from pipelines.retrieval import (
    GOEMOTIONS_TO_MIKELS,
    ISEAR_TO_MIKELS,
    SEED_SOURCE,
    CorpusNotFoundError,
    IndexMismatchError,
    Sentence,
    SentenceDatabase,
    build_database,
    cap_per_emotion,
    check_corpus_files,
    dedupe_sentences,
    ensure_seed_index,
    load_goemotions,
    load_isear,
    load_seed_sentences,
    map_goemotions_labels,
    map_isear_label,
    open_database,
    read_manifest,
)
from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import Evidence

GOEMOTIONS_LABELS = (
    "admiration amusement anger annoyance approval caring confusion curiosity desire disappointment disapproval "
    "disgust embarrassment excitement fear gratitude grief joy love nervousness optimism pride realization relief "
    "remorse sadness surprise neutral"
).split()


@pytest.fixture(scope="module")
def enc():
    return tiny_text_encoder(0)


@pytest.fixture(scope="module")
def seed_db(enc, tmp_path_factory):
    out = tmp_path_factory.mktemp("seed-index")
    db = build_database(["seed"], None, enc, out, "flat", progress=False)
    return db, out


# -- label mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, expected",
    [
        (["anger"], "anger"),
        (["annoyance"], "anger"),
        (["anger", "annoyance"], "anger"),
        (["disgust"], "disgust"),
        (["grief"], "sadness"),
        (["disappointment", "sadness"], "sadness"),
        (["nervousness"], "fear"),
        (["fear", "nervousness"], "fear"),
        (["excitement"], "excitement"),
        (["admiration"], "awe"),
        (["joy"], "contentment"),
        (["relief", "joy"], "contentment"),
        (["amusement"], "amusement"),
        (["joy", "excitement"], None),  # two different Mikels emotions
        (["admiration", "approval"], None),  # one label does not map
        (["love"], None),
        (["gratitude"], None),
        (["remorse"], None),
        (["surprise"], None),
        (["neutral"], None),
        ([], None),
    ],
)
def test_goemotions_mapping_cases(labels, expected):
    assert map_goemotions_labels(labels) == expected


def test_goemotions_table_is_complete_and_covers_every_emotion():
    assert set(GOEMOTIONS_TO_MIKELS) == set(GOEMOTIONS_LABELS)
    targets = {v for v in GOEMOTIONS_TO_MIKELS.values() if v is not None}
    assert targets == set(MIKELS_EMOTIONS)


@pytest.mark.parametrize(
    "label, expected",
    [
        ("joy", "excitement"),
        ("fear", "fear"),
        ("anger", "anger"),
        ("sadness", "sadness"),
        ("disgust", "disgust"),
        ("shame", None),
        ("guilt", None),
        ("Joy ", "excitement"),
    ],
)
def test_isear_mapping_cases(label, expected):
    assert map_isear_label(label) == expected
    assert set(ISEAR_TO_MIKELS) == {"joy", "fear", "anger", "sadness", "disgust", "shame", "guilt"}


# -- corpora ----------------------------------------------------------------------------------


def test_seed_sentences_are_balanced_and_unique():
    seed = load_seed_sentences()
    assert len(seed) == 240
    assert {e: sum(s.emotion == e for s in seed) for e in MIKELS_EMOTIONS} == {e: 30 for e in MIKELS_EMOTIONS}
    assert all(s.source == SEED_SOURCE for s in seed)
    assert len({s.text.lower() for s in seed}) == 240


def _write_goemotions(root: Path) -> None:
    g = root / "text" / "goemotions"
    g.mkdir(parents=True)
    (g / "labels.txt").write_text("\n".join(GOEMOTIONS_LABELS) + "\n")
    idx = {n: i for i, n in enumerate(GOEMOTIONS_LABELS)}
    rows = [
        ("The firefighters walked out of the smoke carrying the kitten", f"{idx['admiration']}", "a1"),
        ("This is so annoying I could scream", f"{idx['anger']},{idx['annoyance']}", "a2"),
        ("Glad and thrilled at once here", f"{idx['joy']},{idx['excitement']}", "a3"),  # conflicting
        ("lol", f"{idx['amusement']}", "a4"),  # too short
        ('She said ""never again"" and left the party', f"{idx['sadness']}", "a5"),
        ("Thanks for the tip friend", f"{idx['gratitude']}", "a6"),  # dropped label
    ]
    body = "text\tlabel\tid\n" + "".join((f'"{t}"' if '""' in t else t) + f"\t{lab}\t{i}\n" for t, lab, i in rows)
    for split in ("train", "dev", "test"):
        (g / f"{split}.tsv").write_text(body if split == "train" else "text\tlabel\tid\n", encoding="utf-8")


def _write_isear(root: Path) -> None:
    header = "ID|" + "|".join(f"C{i}" for i in range(1, 36)) + "|Field1|Field3|Field2|MYKEY|SIT|STATE|"
    pre = "1|" + "|".join("0" for _ in range(35))
    rows = [
        f"{pre}|joy|3|2|k1|When I passed the exam and á everybody celebrated with me.|1|",
        f'{pre}|fear|3|2|k2|A dog chased me down á the street \\late at night\\" and á|I ran home."|1|',
        f"{pre}|shame|3|2|k3|When I forgot my friend's birthday party completely.|1|",
        f"{pre}|anger|3|2|k4|[ No response.]|1|",
        f"{pre}|sadness|3|2|k5|I do not remember such a situation.|1|",
        f"{pre}|anger|3|2|k7|As in sadness (A), relating to this slaughter.|1|",
        f"{pre}|disgust|3|2|k6|Seeing someone spit on the floor of the bus.|1|",
    ]
    t = root / "text"
    t.mkdir(parents=True, exist_ok=True)
    (t / "isear.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def test_goemotions_parser(tmp_path):
    _write_goemotions(tmp_path)
    got = {(s.text, s.emotion) for s in load_goemotions(tmp_path)}
    assert got == {
        ("The firefighters walked out of the smoke carrying the kitten", "awe"),
        ("This is so annoying I could scream", "anger"),
        ('She said "never again" and left the party', "sadness"),
    }
    # the text/ folder itself is accepted too
    assert len(load_goemotions(tmp_path / "text")) == 3


def test_isear_parser_cleans_and_filters(tmp_path):
    _write_isear(tmp_path)
    got = {s.emotion: s.text for s in load_isear(tmp_path)}
    assert got == {
        "excitement": "When I passed the exam and everybody celebrated with me.",
        "fear": 'A dog chased me down the street "late at night" and I ran home.',
        "disgust": "Seeing someone spit on the floor of the bus.",
    }
    assert all(s.source == "isear" for s in load_isear(tmp_path))


def test_missing_corpus_files_are_named(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="isear.csv"):
        check_corpus_files(["seed", "isear"], tmp_path)
    with pytest.raises(CorpusNotFoundError, match="goemotions"):
        build_database(["goemotions"], tmp_path, tiny_text_encoder(0), None)
    check_corpus_files(["seed"], tmp_path)  # the seed ships with the project


def test_dedupe_and_cap():
    s = [
        Sentence("A dog barks", "anger", "x"),
        Sentence("a  dog barks!", "anger", "y"),  # duplicate, same label: first kept
        Sentence("Rain again", "sadness", "x"),
        Sentence("rain again", "contentment", "y"),  # conflicting labels: both dropped
        Sentence("Sun", "contentment", "x"),
    ]
    assert [(x.text, x.source) for x in dedupe_sentences(s)] == [("A dog barks", "x"), ("Sun", "x")]
    many = [Sentence(f"angry {i}", "anger", "goemotions") for i in range(10)] + [
        Sentence("seeded", "anger", SEED_SOURCE)
    ]
    capped = cap_per_emotion(many, 3, seed=1)
    assert len(capped) == 3 and any(x.source == SEED_SOURCE for x in capped)
    assert capped == cap_per_emotion(many, 3, seed=1)  # reproducible
    assert cap_per_emotion(many, None) == many


# -- database and index -----------------------------------------------------------------------


def test_build_save_load_round_trip(seed_db, enc):
    db, out = seed_db
    for name in ("index.faiss", "sentences.jsonl", "features.npy", "manifest.json"):
        assert (out / name).is_file()
    m = read_manifest(out)
    assert m["count"] == 240 and m["version"] == db.version and m["index"]["type"] == "flat"
    assert m["text_encoder"] == {"name": enc.name, "dim": enc.dim}
    assert m["embedding_encoder"]["shared_with_features"] is True
    assert m["emotions"] == {e: 30 for e in MIKELS_EMOTIONS}
    loaded = SentenceDatabase.load(out)
    assert loaded.version == db.version and loaded.sentences == db.sentences
    assert loaded.shared_embeddings
    q = enc.encode(["a rainbow spanning a valley", "a rat in the alley"])
    for a, b in zip(db.search(q, 3), loaded.search(q, 3)):
        np.testing.assert_array_equal(a, b)


def test_exact_duplicate_query_returns_that_sentence(seed_db, enc):
    db, _ = seed_db
    picks = [0, 37, 99, 150, 239]
    q = enc.encode([db.sentences[i].text for i in picks])
    r = db.retrieve(q, k=3)
    assert r.ids[:, 0].tolist() == picks
    np.testing.assert_allclose(r.scores[:, 0], 1.0, atol=1e-4)
    assert r.features.shape == (5, 3, enc.dim)
    assert [row[0].text for row in r.sentences] == [db.sentences[i].text for i in picks]
    assert r.emotion_ids[:, 0].tolist() == [MIKELS_EMOTIONS.index(db.sentences[i].emotion) for i in picks]
    ev = r.evidence()
    assert isinstance(ev[0][0], Evidence) and ev[0][0].source == SEED_SOURCE
    assert db.evidence(r.scores, r.ids)[1][0].text == db.sentences[37].text
    # torch queries and 1-D queries are accepted
    s_t, i_t = db.search(torch.from_numpy(q[0]), k=1)
    assert i_t.tolist() == [[0]]


def test_stored_features_match_re_encoding(seed_db, enc):
    _, out = seed_db
    loaded = SentenceDatabase.load(out)
    fresh = enc.encode([s.text for s in loaded.sentences])
    np.testing.assert_allclose(loaded.features, fresh, atol=1e-5)
    ids = np.array([[3, 4, 5]])
    np.testing.assert_array_equal(loaded.features_for(ids)[0], loaded.features[[3, 4, 5]])


def _clustered(n_clusters=8, per=40, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    x = np.concatenate([c + 0.15 * rng.normal(size=(per, d)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_clusters), per)
    sentences = [Sentence(f"s{i}", MIKELS_EMOTIONS[labels[i]], "test") for i in range(len(x))]
    queries = (centres[labels[::7]] + 0.1 * rng.normal(size=(len(labels[::7]), d))).astype(np.float32)
    return sentences, x, queries


def test_flat_hnsw_ivf_agree_on_top1():
    sentences, x, queries = _clustered()
    flat = SentenceDatabase(sentences, x, text_encoder="synthetic", index_type="flat")
    hnsw = SentenceDatabase(sentences, x, text_encoder="synthetic", index_type="hnsw")
    ivf = SentenceDatabase(sentences, x, text_encoder="synthetic", index_type="ivf")
    _, ids_flat = flat.search(queries, 5)
    _, ids_hnsw = hnsw.search(queries, 5)
    _, ids_ivf = ivf.search(queries, 5)
    assert (ids_flat[:, 0] == ids_hnsw[:, 0]).mean() == 1.0
    assert (ids_flat[:, 0] == ids_ivf[:, 0]).mean() >= 0.95
    assert hnsw.index_params["M"] == 32 and ivf.index_params["nlist"] >= 1
    # exact-search ground truth for the flat index
    exact = np.argmax((queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ x.T, axis=1)
    np.testing.assert_array_equal(ids_flat[:, 0], exact)


def test_hnsw_and_ivf_survive_save_load(tmp_path):
    sentences, x, queries = _clustered(seed=1)
    for kind in ("hnsw", "ivf"):
        db = SentenceDatabase(sentences, x, text_encoder="synthetic", index_type=kind)
        db.save(tmp_path / kind)
        back = SentenceDatabase.load(tmp_path / kind)
        assert back.index_params == db.index_params
        np.testing.assert_array_equal(back.search(queries, 3)[1], db.search(queries, 3)[1])


def test_separate_embedding_space(tmp_path):
    """A CLIP-space index with BERT-like features: two arrays, both stored."""
    sentences, emb, queries = _clustered(n_clusters=4, per=10, d=16, seed=2)
    feats = np.random.default_rng(3).normal(size=(len(sentences), 40)).astype(np.float32)
    db = SentenceDatabase(sentences, feats, emb * 3.0, text_encoder="bert-ish", embedding_encoder="clip-ish")
    assert not db.shared_embeddings and db.embedding_dim == 16 and db.feature_dim == 40
    np.testing.assert_allclose(np.linalg.norm(db.embeddings, axis=1), 1.0, atol=1e-5)  # normalised on the way in
    db.save(tmp_path)
    assert (tmp_path / "embeddings.npy").is_file()
    back = SentenceDatabase.load(tmp_path)
    r = back.retrieve(queries, k=2)
    assert r.features.shape == (len(queries), 2, 40)
    np.testing.assert_allclose(r.features, feats[r.ids])
    with pytest.raises(ValueError, match="query dim"):
        back.search(np.ones((1, 40), dtype=np.float32), 1)


def test_search_edge_cases_and_cpu_fallback(seed_db, enc):
    db, _ = seed_db
    small = SentenceDatabase(db.sentences[:2], db.features[:2], text_encoder=db.text_encoder)
    scores, ids = small.search(enc.encode(["anything"]), k=10)  # k capped at the size
    assert ids.shape == (1, 2) and sorted(ids[0].tolist()) == [0, 1]
    moved = small.to("cuda")  # without GPU faiss (or a GPU) it stays on CPU, logged, no error
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        assert moved.on_gpu is False and moved.search_index is moved.cpu_index
    assert small.search(enc.encode(["anything"]), k=1)[1].shape == (1, 1)
    with pytest.raises(ValueError, match="L2-normalised"):
        SentenceDatabase(db.sentences[:2], db.features[:2] * 2, text_encoder="x")
    with pytest.raises(ValueError, match="unknown index type"):
        SentenceDatabase(db.sentences[:2], db.features[:2], text_encoder="x", index_type="pq")


def test_load_detects_damage(seed_db, tmp_path):
    db, _ = seed_db
    db.save(tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    m["version"] = "idx-000000000000"
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="content hash"):
        SentenceDatabase.load(tmp_path / "a")
    with pytest.raises(IndexMismatchError, match="manifest.json missing"):
        SentenceDatabase.load(tmp_path / "nothing")


def test_ensure_seed_index_builds_once_and_reuses(tmp_path, enc):
    cache = tmp_path / "index" / "seed"
    first = ensure_seed_index(cache, enc)
    stamp = (cache / "manifest.json").stat().st_mtime_ns
    again = ensure_seed_index(cache, enc)
    assert again.version == first.version and len(again) == 240
    assert (cache / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = ensure_seed_index(cache, tiny_text_encoder(1))  # different encoder: rebuilt
    assert other.version != first.version and read_manifest(cache)["text_encoder"]["name"] == other.text_encoder
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "keep.txt").write_text("mine")
    with pytest.raises(IndexMismatchError, match="refusing"):
        ensure_seed_index(junk, enc)


def test_open_database_checks_encoder(seed_db, tmp_path, enc):
    _, out = seed_db
    assert len(open_database(out, enc)) == 240
    with pytest.raises(IndexMismatchError, match="rebuild"):
        open_database(out, tiny_text_encoder(2, hidden_size=16))
    default = open_database(None, enc, artifacts_dir=tmp_path / "artifacts")
    assert (tmp_path / "artifacts" / "index" / "seed" / "manifest.json").is_file() and len(default) == 240


# -- CLI --------------------------------------------------------------------------------------


def test_cli_build_info_and_missing_data(tmp_path):
    from typer.testing import CliRunner

    from workers.cli.index import app

    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(
        app,
        [
            "build",
            "--corpus",
            "seed",
            "--out",
            str(out),
            "--text-encoder",
            "tiny-random",
            "--index-type",
            "hnsw",
            "--max-per-emotion",
            "5",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["count"] == 40 and summary["index_type"] == "hnsw"
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["count"] == 40
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "contentment" in res.stdout
    res = runner.invoke(
        app, ["build", "--corpus", "isear", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2
    assert "isear.csv" in res.output and "--data-dir" in res.output
    assert runner.invoke(app, ["info", str(tmp_path)]).exit_code == 2


def test_clip_space_index_with_bert_features(tmp_path, monkeypatch, enc):
    """Real-CLIP layout with a tiny local CLIP checkpoint: CLIP text embeddings index the sentences,
    BERT-like features ride along, and an image is queried through CLIP's visual projection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import CLIPConfig, CLIPModel

    from models.encoders import load_clip_text_embedder, load_image_backbone

    tok = enc.tokenizer
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)

    clip_text = load_clip_text_embedder(str(folder))
    clip_image = load_image_backbone(str(folder))
    assert clip_text.dim == 8 and clip_image.has_retrieval_projection
    sentences = load_seed_sentences()[::10]
    db = SentenceDatabase.from_sentences(sentences, enc, embedding_encoder=clip_text)
    assert not db.shared_embeddings and db.embedding_dim == 8 and db.feature_dim == enc.dim
    assert db.embedding_encoder == clip_text.name and db.text_encoder == enc.name
    np.testing.assert_allclose(db.features, enc.encode([s.text for s in sentences]), atol=1e-5)

    image = np.random.default_rng(0).integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    with torch.no_grad():
        _, pooled = clip_image(clip_image.preprocess([image]))
        query = clip_image.retrieval_embedding(pooled)
    r = db.retrieve(query, k=3)
    assert r.features.shape == (1, 3, enc.dim)
    exact = np.argsort(-(db.embeddings @ query.numpy()[0]))[:3]
    np.testing.assert_array_equal(r.ids[0], exact)
    db.save(tmp_path / "clip-index")
    m = read_manifest(tmp_path / "clip-index")
    assert m["embedding_encoder"] == {"name": clip_text.name, "dim": 8, "shared_with_features": False}
    with pytest.raises(IndexMismatchError, match="space"):
        open_database(tmp_path / "clip-index", enc, embedding_encoder_name="something-else")
    assert len(open_database(tmp_path / "clip-index", enc, embedding_encoder_name=clip_text.name)) == len(sentences)
