"""The per-caption parse cache: nouns, noun phrases and YAKE keyphrases of every caption.

One artifact of kind "terms" per corpus and extractor configuration, named after the corpus. Its
recipe is the corpus artifact and the extractor configuration, *not* the corpus version, so the
cache grows with the corpus: a run parses only the captions whose caption_id it does not hold
yet (an unchanged corpus is a no-op run) and commits them in parts, so a killed run resumes.

Parsing is a pure function of the caption text, so each distinct text is parsed once (RS corpora
repeat captions a lot: RSICD has 18,190 distinct texts among 54,605) and `parse_captions` maps
it over processes: batches of texts go out, each helper loads the spaCy pipeline and YAKE once,
compact tuples come back and are put in order, so the output does not depend on the number of
workers (`CaptionMapper`).

Tables: `caption_terms(corpus, caption_id, sample_id, kind, term, score, part)` with kind noun,
noun_phrase (score NULL) or yake (score = YAKE's, lower is better), and `parsed_captions`, one
row per parsed caption with its term counts: the ledger of what is done, since a caption such as
RSICD's " ." yields no term at all."""

from __future__ import annotations

import os
import queue
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

import duckdb
import pyarrow as pa
import yake

from clipstore.mining.nlp import DEFAULT_MODEL, NounExtractor
from clipstore.mining.scope import resolve_scope, scope_captions
from clipstore.mining.tables import CAPTION_TERMS, TERMS_TABLES
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.parquet import commit_part_tables, table_spec
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import context as workers_context

KIND = "terms"
STAGE_VERSION = 1   # bump when the same captions would parse into other terms
DEFAULT_PART_SIZE = 5000     # captions per committed part: what a killed run can lose
BATCH_SIZE = 128             # distinct texts per task: ~0.1 s of work, small to send
PARSED_CAPTIONS = pa.schema([
    ("corpus", pa.string()), ("caption_id", pa.string()), ("sample_id", pa.string()),
    ("n_nouns", pa.int32()), ("n_phrases", pa.int32()), ("n_keyphrases", pa.int32()), ("part", pa.int32()),
])
TABLES = {**TERMS_TABLES, "parsed_captions": table_spec(PARSED_CAPTIONS, key="caption_id")}


@dataclass(frozen=True)
class TermsConfig:
    """What decides a caption's terms (part of the recipe)."""

    model: str | None = DEFAULT_MODEL   # trained spaCy pipeline to use when installed
    yake_n: int = 2                     # longest keyphrase, in words (S-CLIP: 2)
    yake_top: int = 5                   # keyphrases kept per caption
    yake_dedup: float = 0.9             # YAKE's dedup_lim (its default)
    yake_language: str = "en"


@dataclass(frozen=True)
class CaptionTerms:
    """One caption's terms: noun lemmas, noun-phrase lemmas, YAKE (keyphrase, score) best first."""

    nouns: tuple[str, ...]
    phrases: tuple[str, ...]
    keyphrases: tuple[tuple[str, float], ...]


class TermParser:
    """The nlp pipeline and a YAKE extractor, loaded once per process."""

    def __init__(self, config: TermsConfig = TermsConfig(), require_trained: bool = False):
        self.config = config
        self.nouns = NounExtractor.shared(config.model, require_trained)
        # keyword arguments in snake_case: YAKE 0.7 silently ignores the old camelCase names
        self.yake = yake.KeywordExtractor(lan=config.yake_language, n=config.yake_n, top=config.yake_top,
                                          dedup_lim=config.yake_dedup)

    @property
    def info(self) -> dict:
        return self.nouns.info

    def parse(self, texts: list[str]) -> list[CaptionTerms]:
        nouns = self.nouns.extract_many(texts)
        return [CaptionTerms(n.nouns, n.phrases, self._keyphrases(text)) for text, n in zip(texts, nouns)]

    def _keyphrases(self, text: str) -> tuple[tuple[str, float], ...]:
        if not any(c.isalpha() for c in text):
            return ()
        return tuple((term.lower(), float(score)) for term, score in self.yake.extract_keywords(text))


# ---- the map ---------------------------------------------------------------------------------
_READY = -1  # what a helper sends once its pipeline is loaded


def _helper_main(parser: TermParser | tuple[TermsConfig, bool], tasks, results, parent_pid: int) -> None:
    """A helper process: with the parent's loaded pipeline (forked) or after loading its own
    (spawned: `parser` is (config, trained)), parse (index, texts) batches until told to stop
    (None) or until its parent is gone (a killed run must not leave helpers behind)."""
    if not isinstance(parser, TermParser):
        # the parent already settled the mode: a helper does not look for the trained pipeline again
        config, trained = parser
        parser = TermParser(config if trained else replace(config, model=None), require_trained=trained)
    results.put((_READY, None, None))
    while True:
        try:
            item = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if item is None:
            return
        index, texts = item
        try:
            # plain tuples travel back: smaller and faster to pickle than dataclasses
            results.put((index, [(t.nouns, t.phrases, t.keyphrases) for t in parser.parse(texts)], None))
        except Exception as exc:  # reported to the parent, which stops the run
            results.put((index, None, f"{type(exc).__name__}: {exc}"))


def available_cpus() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class CaptionMapper:
    """Parses texts, each distinct text once, on `workers` processes: this one and workers - 1
    helpers. Helpers pull batches from a shared queue, and this process parses batches too, so
    it is busy from the start while helpers boot (importing spaCy takes seconds), takes back
    the batches no helper has picked up, and never waits on a helper that has not started."""

    def __init__(self, config: TermsConfig = TermsConfig(), workers: int | None = None,
                 parser: TermParser | None = None, memo_limit: int = 500_000):
        self.config = config
        self.workers = max(1, available_cpus() if workers is None else workers)
        self._parser = parser
        self._helpers: list = []
        self._tasks = self._results = None
        self.ready_helpers = 0
        self.helper_batches = 0   # batches parsed by helpers (the rest: by this process)
        self._memo: dict[str, CaptionTerms] = {}
        self._memo_limit = memo_limit
        self.parsed_texts = 0

    @property
    def parser(self) -> TermParser:
        if self._parser is None:
            self._parser = TermParser(self.config)
        return self._parser

    def __enter__(self) -> "CaptionMapper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for _ in self._helpers:
            self._tasks.put(None)
        for helper in self._helpers:
            helper.join(timeout=1)  # a helper still importing spaCy has nothing to finish
            if helper.is_alive():
                helper.terminate()
        self._helpers = []

    def map(self, texts: list[str]) -> list[CaptionTerms]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if len(self._memo) + len(todo) > self._memo_limit:
            self._memo = {}  # bounded memory on huge corpora; repeats are mostly close together
        for text, terms in zip(todo, self._parse(todo)):
            self._memo[text] = terms
        self.parsed_texts += len(todo)
        return [self._memo[t] for t in texts]

    def _parse(self, texts: list[str]) -> list[CaptionTerms]:
        batches = [texts[i:i + BATCH_SIZE] for i in range(0, len(texts), BATCH_SIZE)]
        if self.workers == 1 or len(batches) <= 1:
            return [t for batch in batches for t in self.parser.parse(batch)]
        self._start_helpers()
        results: dict[int, list[CaptionTerms]] = {}
        local = deque(range(len(batches)))   # not handed out yet
        queued = 0                           # handed to the shared queue, result not back
        # enough queued that a helper never waits while this process is busy with a batch; what
        # no helper has picked up at the end, this process takes back
        ahead = 4 * len(self._helpers)

        def take(index: int) -> None:
            results[index] = self.parser.parse(batches[index])

        while len(results) < len(batches):
            queued -= self._collect(results, block=False)
            while local and queued < ahead:
                index = local.popleft()
                self._tasks.put((index, batches[index]))
                queued += 1
            if local:  # this process works from the back, the helpers from the front
                take(local.pop())
                continue
            try:
                index, _ = self._tasks.get_nowait()  # take back what no helper picked up
                queued -= 1
                take(index)
            except queue.Empty:
                queued -= self._collect(results, block=True)
        return [t for i in range(len(batches)) for t in results[i]]

    def _collect(self, results: dict, block: bool) -> int:
        got = 0
        while True:
            try:
                index, rows, error = self._results.get(timeout=0.05) if block and not got else \
                    self._results.get_nowait()
            except queue.Empty:
                if block and not all(h.is_alive() for h in self._helpers):  # its batch would never come
                    raise ClipstoreError("a caption-parsing helper process stopped",
                                         fix="re-run; with --workers 1 parsing happens in this process") from None
                return got
            if error:
                raise ClipstoreError(f"parsing a batch of captions failed: {error}",
                                     fix="re-run with --workers 1 to see the full error")
            if index == _READY:
                self.ready_helpers += 1
                continue
            results[index] = [CaptionTerms(*r) for r in rows]
            self.helper_batches += 1
            got += 1

    def start(self, wait: bool = False, timeout: float = 300.0) -> None:
        """Start the helpers now (map() does it when needed); with `wait`, until they are ready."""
        if self.workers > 1:
            self._start_helpers()
        deadline = time.monotonic() + timeout
        while wait and self.ready_helpers < len(self._helpers):
            if time.monotonic() > deadline:
                raise ClipstoreError(f"caption-parsing helpers not ready after {timeout:.0f} s",
                                     fix="check the machine's load, or use --workers 1")
            self._collect({}, block=True)

    def _start_helpers(self) -> None:
        if self._helpers:
            return
        # On Linux a forked helper starts with this process's loaded pipeline and parses at once;
        # a spawned one (elsewhere) first imports spaCy (seconds) while this process works.
        # Forking is safe here: helpers run spaCy and YAKE only, never torch, and the store's
        # writer lock is not inherited (warehouse.lock closes it in the child).
        forked = sys.platform.startswith("linux")
        ctx = workers_context("fork" if forked else "spawn")   # helpers exit with this process, ignore Ctrl-C
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        parser = self.parser if forked else (self.config, self.parser.nouns.mode == "trained")
        for _ in range(self.workers - 1):
            helper = ctx.Process(target=_helper_main, daemon=True,
                                 args=(parser, self._tasks, self._results, os.getpid()))
            helper.start()
            self._helpers.append(helper)


def parse_captions(texts: list[str], workers: int | None = None,
                   config: TermsConfig = TermsConfig()) -> list[CaptionTerms]:
    """The terms of each text, in order, parsed on `workers` processes (default: all cores)."""
    with CaptionMapper(config, workers) as mapper:
        return mapper.map(list(texts))


def parse_loop(texts: list[str], config: TermsConfig = TermsConfig()) -> list[CaptionTerms]:
    """The single-process reference that `parse_captions` must equal (and beat on several cores)."""
    parser = TermParser(config)
    memo: dict[str, CaptionTerms] = {}
    out = []
    for text in texts:
        if text not in memo:
            memo[text] = parser.parse([text])[0]
        out.append(memo[text])
    return out


# ---- the stage -------------------------------------------------------------------------------
def mine_terms(store: Store, corpus: str, *, model: str | None = DEFAULT_MODEL, require_trained: bool = False,
               workers: int | None = None, wait: bool = False, progress: bool = True,
               part_size: int = DEFAULT_PART_SIZE) -> Artifact:
    """Parse the captions of `corpus` not parsed yet and return its terms artifact."""
    parser = TermParser(TermsConfig(model=model), require_trained=require_trained)
    with store.writing(wait=wait), CaptionMapper(parser.config, workers, parser=parser) as mapper:
        return build_terms(store, corpus, mapper, progress=progress, part_size=part_size)[0]


def build_terms(store: Store, corpus: str, mapper: CaptionMapper, *, progress: bool = True,
                part_size: int = DEFAULT_PART_SIZE) -> tuple[Artifact, dict]:
    """`mine_terms` for a caller that holds the store's writer lock and a mapper (whose helper
    processes can then serve several corpora): (artifact, run summary)."""
    if not isinstance(part_size, int) or part_size < 1:
        raise InputError(f"part size {part_size!r} is not a positive number of captions", fix="e.g. part_size=5000")
    scope = resolve_scope(store, corpora=[corpus])
    params = recipe_params(corpus, mapper.config, mapper.parser.info)
    # incremental like ingest: the cache grows with its corpus, parsing only captions it lacks
    builder = store.produce(kind=KIND, name=corpus, stage="mine terms", version=STAGE_VERSION, params=params,
                            sources=[scope.inputs[corpus]], tables=TABLES, reuse=False,
                            config={**params, "workers": mapper.workers, "part_size": part_size,
                                    "nlp": mapper.parser.info})
    with builder.failing_on_error():
        return _run(store, builder, scope, mapper, progress, part_size)


def recipe_params(corpus: str, config: TermsConfig, nlp_info: dict) -> dict:
    """Corpus and extractor configuration; `reason` (a message) and the pipe list stay out."""
    extractor = {k: v for k, v in nlp_info.items() if k not in ("reason", "pipes")}
    return {"corpus": corpus, "config": asdict(config), "extractor": extractor}


def _run(store: Store, builder: ArtifactBuilder, scope, mapper: CaptionMapper, progress: bool,
         part_size: int) -> tuple[Artifact, dict]:
    started = time.monotonic()
    parsed_texts, helper_batches = mapper.parsed_texts, mapper.helper_batches
    captions = scope_captions(store, scope).select(["corpus", "caption_id", "sample_id", "text"]).to_pylist()
    pending = _pending(captions, _parsed(builder))
    bar = _progress(progress, builder.name, len(pending))
    parsed = 0
    for rows in _parts(pending, part_size):
        part = builder.next_part()
        terms = mapper.map([r["text"] for r in rows])
        _commit(builder, part, rows, terms)
        parsed += len(rows)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    if parsed == 0 and builder.complete:  # nothing new: the totals are the ones on record
        done = store.get(builder.artifact_id)
        counts, stats = done.counts, done.stats
    else:
        counts, stats = _totals(builder)
    stats["extractor"] = mapper.parser.info
    summary = {"parsed_captions": parsed, "distinct_texts": mapper.parsed_texts - parsed_texts,
               "skipped": len(captions) - parsed, "workers": mapper.workers,
               "helper_batches": mapper.helper_batches - helper_batches,
               "seconds": round(time.monotonic() - started, 3)}
    return builder.finish(counts, stats, summary=summary, noop=parsed == 0 and not builder.pending_parts), summary


def _parsed(builder: ArtifactBuilder) -> set[tuple[str, str]]:
    """(caption_id, sample_id) pairs already committed."""
    paths = [str(p) for _, _, p in builder.committed_parts("parsed_captions")]
    if not paths:
        return set()
    with duckdb.connect() as con:
        rows = con.execute("SELECT caption_id, sample_id FROM read_parquet($paths)", {"paths": paths}).fetchall()
    return set(rows)


def _pending(captions: list[dict], parsed: set[tuple[str, str]]) -> list[dict]:
    """Captions to parse. A caption id with any new sample is redone with all its samples, since
    its rows in a later part supersede the earlier ones (identical images under two keys)."""
    redo = {c["caption_id"] for c in captions if (c["caption_id"], c["sample_id"]) not in parsed}
    return [c for c in captions if c["caption_id"] in redo]


def _parts(pending: list[dict], size: int):
    """Consecutive chunks of about `size` captions; all rows of one caption id stay together."""
    groups: dict[str, list[dict]] = {}
    for row in pending:
        groups.setdefault(row["caption_id"], []).append(row)
    chunk: list[dict] = []
    for rows in groups.values():
        chunk += rows
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _commit(builder: ArtifactBuilder, part: int, rows: list[dict], terms: list[CaptionTerms]) -> None:
    term_rows, ledger = [], []
    for row, t in zip(rows, terms):
        base = {"corpus": row["corpus"], "caption_id": row["caption_id"], "sample_id": row["sample_id"]}
        term_rows += [{**base, "kind": "noun", "term": n, "score": None, "part": part} for n in t.nouns]
        term_rows += [{**base, "kind": "noun_phrase", "term": p, "score": None, "part": part} for p in t.phrases]
        term_rows += [{**base, "kind": "yake", "term": k, "score": s, "part": part} for k, s in t.keyphrases]
        ledger.append({**base, "n_nouns": len(t.nouns), "n_phrases": len(t.phrases),
                       "n_keyphrases": len(t.keyphrases), "part": part})
    commit_part_tables(builder, part, {"caption_terms": (term_rows, CAPTION_TERMS),
                                       "parsed_captions": (ledger, PARSED_CAPTIONS)})


def _totals(builder: ArtifactBuilder) -> tuple[dict, dict]:
    terms = [str(p) for _, _, p in builder.committed_parts("caption_terms")]
    ledger = [str(p) for _, _, p in builder.committed_parts("parsed_captions")]
    counts = {"captions": 0, "rows": 0}
    stats: dict = {"per_kind": {}}
    with duckdb.connect() as con:
        if ledger:
            counts["captions"], counts["captions_without_terms"] = con.execute(
                "SELECT count(DISTINCT caption_id), count(*) FILTER (n_nouns + n_phrases + n_keyphrases = 0) "
                "FROM read_parquet($p)", {"p": ledger}).fetchone()
        if terms:
            for kind, n, distinct in con.execute("SELECT kind, count(*), count(DISTINCT term) FROM read_parquet($p) "
                                                 "GROUP BY kind ORDER BY kind", {"p": terms}).fetchall():
                stats["per_kind"][kind] = {"rows": n, "distinct_terms": distinct}
                counts["rows"] += n
    return counts, stats


def read_terms(store: Store, artifact: Artifact, kinds: tuple[str, ...] = ("noun",)) -> pa.Table:
    """caption_id, sample_id, kind, term of one terms artifact, from the newest parse of each
    caption (read from its own parts, whichever artifact is current for the corpus name)."""
    terms = [str(p) for p in store.table_paths(artifact, "caption_terms")]
    ledger = [str(p) for p in store.table_paths(artifact, "parsed_captions")]
    if not terms or not ledger:
        return pa.table({c: pa.array([], pa.string()) for c in ("caption_id", "sample_id", "kind", "term")})
    with duckdb.connect() as con:
        return con.sql("SELECT t.caption_id, t.sample_id, t.kind, t.term FROM read_parquet($terms) t "
                       "JOIN (SELECT caption_id, max(part) AS part FROM read_parquet($ledger) GROUP BY caption_id) "
                       "latest USING (caption_id, part) WHERE list_contains($kinds, t.kind) "
                       "ORDER BY t.part, t.caption_id, t.sample_id, t.kind, t.term",
                       params={"terms": terms, "ledger": ledger, "kinds": list(kinds)}).to_arrow_table()


def _progress(enabled: bool, name: str, total: int):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"terms {name}", unit=" captions", dynamic_ncols=True, leave=False)
