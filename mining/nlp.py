"""Nouns and noun phrases of a caption, for the SemiCLIP concept vocabulary.

Two modes, recorded in every recipe through `NounExtractor.info`:

- "trained": an installed spaCy English pipeline (default `en_core_web_sm`, or a pipeline folder):
  nouns are tokens tagged NN* (the SemiCLIP rule), as lemmas; noun phrases are the parser's noun
  chunks. A pipeline without a parser gives runs of JJ*/NN* tags ending in a noun instead, and
  one without a lemmatizer the lower-cased words.
- "fallback": when that pipeline is not installed, `spacy.blank("en")` with the lookup
  lemmatizer of spacy-lookups-data, and a part-of-speech test built on the WordNet word lists
  those lookups ship (`en_lemma_index`: WordNet's nouns, verbs, adjectives and adverbs, with
  `en_lemma_exc`/`en_lemma_rules` to reduce inflected forms). A word is a noun when WordNet knows
  it only as a noun ("building", "runway"); a word WordNet also knows as an adjective, verb or
  adverb ("green", "plane", "field", "parking") is read from its neighbors: directly before a
  noun it modifies it ("green trees", "dense residential area"), after a copula it is a
  predicate adjective ("the trees are green"), before an object or after an auxiliary it is a
  verb ("trees line the road", "is lying"), and otherwise a noun ("a plane", "many fields").
  Words WordNet lacks ("bareland", "cropland", typos) are nouns unless shaped like participles
  or adverbs, as a trained tagger mostly reads unknown words. See `_Tagger` for the rules.

In both modes stop words, numbers and non-words are never nouns, noun lemmas are lower-case, and a
noun phrase is kept only when it has two or more words (a single noun is already a noun).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache

import spacy
from spacy.lang.en.stop_words import STOP_WORDS

from clipstore.warehouse.errors import NotFoundError

DEFAULT_MODEL = "en_core_web_sm"
INSTALL_FIX = ("install an official spaCy English pipeline: `python -m spacy download {model}` "
               "(or `pip install` its wheel from github.com/explosion/spacy-models), or drop the strict "
               "option to use the offline fallback")

# Words that open a noun phrase: after them an ambiguous word is read as a noun ("a plane", "many
# fields"), never as a predicate adjective or a verb.
_DETERMINERS = frozenset("a an the this that these those its their his her our my your some many several few no "
                         "each every any all both other another much more most".split())
# Words after which an adjective/noun word is a predicate adjective ("the trees are green").
_PREDICATE_OPENERS = frozenset("is are was were be been being am looks look looked looking seems seem seemed "
                               "appears appear appeared becomes become became very so too quite rather really "
                               "pretty fairly relatively extremely mostly mainly".split())
# ... and the words that carry that reading on ("green and lush", "dark , dense").
_PREDICATE_LINKS = frozenset(["and", "or", ","])
# A noun/verb word directly before these is a verb ("trees line the road", "looks like a").
_OBJECT_OPENERS = _DETERMINERS - {"many", "more", "most", "much", "other", "all", "both"} | {"it", "them"}
# Stop words that head a noun phrase: the modifiers before them are adjectives ("a large amount").
_STOP_HEADS = frozenset("amount part side top bottom front back".split())
_ARTICLES = frozenset("a an the this that".split())
_AUXILIARIES = frozenset("is are was were be been being am has have had can could will would may might should must "
                         "do does did".split())
_PREPOSITIONS = frozenset("on in at through across along around beside besides near next by over under into onto "
                          "from to toward towards between among behind past up down out off away round".split())

NOUN, MODIFIER, OTHER = "N", "M", "O"


@dataclass(frozen=True)
class Nouns:
    """What one caption yields: noun lemmas and noun-phrase lemmas, in order, each once."""

    nouns: tuple[str, ...]
    phrases: tuple[str, ...]


class NounExtractor:
    """Loads the trained pipeline when it is installed, the documented fallback otherwise."""

    def __init__(self, model: str | None = DEFAULT_MODEL, require_trained: bool = False):
        self.model = model or None
        self.nlp, reason, model_version = self._load_trained(self.model)
        if self.nlp is None and require_trained:
            raise NotFoundError(f"the trained spaCy pipeline {self.model!r} is not available: {reason}",
                                fix=INSTALL_FIX.format(model=self.model or DEFAULT_MODEL))
        self.mode = "trained" if self.nlp is not None else "fallback"
        if self.nlp is None:
            self.nlp, self._tagger = _fallback_pipeline()
        self.info = {"requested": self.model, "mode": self.mode, "spacy": spacy.__version__,
                     "pipeline": (f"{self.nlp.meta.get('lang')}_{self.nlp.meta.get('name')}"
                                  if self.mode == "trained" else "blank:en+lemmatizer(lookup)+wordnet_pos"),
                     "pipes": list(self.nlp.pipe_names), "reason": reason}
        if self.mode == "trained":
            self.info["model_version"] = model_version
        else:
            self.info["spacy_lookups_data"] = importlib.metadata.version("spacy-lookups-data")

    @classmethod
    @lru_cache(maxsize=4)
    def shared(cls, model: str | None = DEFAULT_MODEL, require_trained: bool = False) -> "NounExtractor":
        """One extractor per setting and process: loading a pipeline takes a while, and an
        extractor holds nothing but caches, so every stage run in a process can share it."""
        return cls(model, require_trained)

    @staticmethod
    def _load_trained(model: str | None):
        """(pipeline, why this mode, its version); the pipeline is None when it cannot be loaded."""
        if model is None:
            return None, "no trained pipeline was requested", None
        try:
            nlp = spacy.load(model, exclude=["ner"])  # the tagger, parser and lemmatizer are what we use
        except OSError as exc:  # spaCy's E050: not installed as a package, nor a pipeline folder
            first = str(exc).splitlines()[0]
            return None, f"trained pipeline {model!r} is not installed ({first})", None
        return nlp, f"trained pipeline {model!r} is installed", nlp.meta.get("version")

    def extract_many(self, texts: list[str], batch_size: int = 256) -> list[Nouns]:
        return [self._extract(doc) for doc in self.nlp.pipe(map(self._prepare, texts), batch_size=batch_size)]

    def extract(self, text: str) -> Nouns:
        return self._extract(self.nlp(self._prepare(text)))

    def _prepare(self, text: str) -> str:
        # the fallback is case-blind, and its lookup table only knows lower-case forms
        return text if self.mode == "trained" else text.lower()

    def _extract(self, doc) -> Nouns:
        if self.mode == "trained":
            return _trained_nouns(doc)
        return self._tagger.nouns(doc)


def _is_word(token) -> bool:
    return token.is_alpha and len(token.text) > 1 and token.lower_ not in STOP_WORDS and not token.like_num


def _hyphen_joins(doc) -> set[int]:
    """Indices of "-" tokens that join two words with no space: "high-rise", "green-blue"."""
    return {i for i in range(1, len(doc) - 1)
            if doc[i].text == "-" and not doc[i - 1].whitespace_ and not doc[i].whitespace_
            and _is_word(doc[i - 1]) and _is_word(doc[i + 1])}


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _trained_nouns(doc) -> Nouns:
    nouns = [_lemma(t) for t in doc if t.tag_.startswith("NN") and _is_word(t)]
    phrases = []
    for chunk in doc.noun_chunks if doc.has_annotation("DEP") else _tag_runs(doc):
        words = list(chunk)
        while words and not _is_word(words[0]):  # "a", "many", "two": not part of the concept
            words.pop(0)
        if len(words) >= 2 and all(_is_word(t) for t in words) and words[-1].tag_.startswith("NN"):
            phrases.append(" ".join([t.lower_ for t in words[:-1]] + [_lemma(words[-1])]))
    return Nouns(_unique(nouns), _unique(phrases))


def _lemma(token) -> str:
    return (token.lemma_ or token.text).lower()


def _tag_runs(doc):
    """Noun phrases without a parser: maximal runs of adjective and noun tags, cut after their
    last noun ("green trees", "parking lot")."""
    run: list = []
    for token in list(doc) + [None]:
        if token is not None and token.tag_[:2] in ("JJ", "NN"):
            run.append(token)
            continue
        while run and not run[-1].tag_.startswith("NN"):
            run.pop()
        if run:
            yield run
        run = []


# ---- fallback --------------------------------------------------------------------------------
def _fallback_pipeline():
    from spacy.lookups import load_lookups

    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    nlp.initialize()  # loads en_lemma_lookup from spacy-lookups-data
    lookups = load_lookups("en", ["lemma_index", "lemma_exc", "lemma_rules"])
    return nlp, _Tagger(lookups.get_table("lemma_index"), lookups.get_table("lemma_exc"),
                        lookups.get_table("lemma_rules"))


@dataclass(frozen=True)
class _Word:
    noun: str | None       # the noun lemma when WordNet knows the word as a noun
    plural: bool           # a noun form other than its lemma ("roads", "plants")
    adjective: bool
    verb: bool
    base_verb: bool        # a verb's dictionary form ("go", "line", "flourish")
    inflected_verb: bool   # an -ing/-ed form of a verb ("lying", "running")
    adverb: bool
    unknown: bool = False  # not in WordNet: "bareland", "cropland", typos

    @property
    def ambiguous(self) -> bool:
        return self.adjective or self.verb or self.adverb


class _Tagger:
    """The fallback part-of-speech test over WordNet's word lists.

    A word that reduces (by WordNet's exceptions and suffix rules, as spaCy's rule lemmatizer
    does) only to a noun is a noun. A word that can also be an adjective, verb or adverb is
    decided from its neighbors, right to left, so that the next word's reading is known:
      1. directly before a noun, or before modifiers that lead to one: a modifier if it can be an
         adjective ("green trees", "medium residential area"), else a noun ("golf course");
      2. an adjective after a copula or degree word ("the trees are green", "very dense"), also
         across "and"/"," ("green and lush"), before "one" ("a small one") or coordinated with a
         modifier ("green and grey plants") stays an adjective;
      3. a verb directly before a determiner or pronoun is a verb ("trees line the road"), and so
         is an -ing/-ed form, or a dictionary form after a plural noun, that ends the sentence or
         meets a preposition ("planes lying on", "roads go through", "plants flourish .");
      4. otherwise a noun ("a plane", "many fields", "lots of trees", "a building in").
    Noun phrases are maximal runs of modifiers followed by one or more nouns."""

    def __init__(self, index, exceptions, rules):
        self._index = {pos: frozenset(index.get(pos, ())) for pos in ("noun", "verb", "adj", "adv")}
        self._exceptions = {pos: exceptions.get(pos, {}) for pos in ("noun", "verb", "adj", "adv")}
        # the most specific suffix first: "crosses" -> cross (-ses), not crosse (-s)
        self._rules = {pos: sorted((tuple(r) for r in rules.get(pos, ())), key=lambda r: -len(r[0]))
                       for pos in ("noun", "verb", "adj")}
        self.word = lru_cache(maxsize=200_000)(self._word)

    def _forms(self, word: str, pos: str) -> list[str]:
        """Dictionary forms `word` can be an inflection of, as `pos` (exceptions first)."""
        forms = list(self._exceptions[pos].get(word, ()))
        for old, new in self._rules.get(pos, ()):
            if word.endswith(old) and len(word) > len(old):
                form = word[: len(word) - len(old)] + new
                if form in self._index[pos]:
                    forms.append(form)
        if word in self._index[pos]:
            forms.append(word)
        return list(dict.fromkeys(forms))

    def _noun_lemma(self, word: str, lookup_lemma: str) -> str | None:
        forms = self._forms(word, "noun")
        if not forms:
            return None
        if self._exceptions["noun"].get(word):  # irregular plurals: "leaves" -> leaf, "men" -> man
            return forms[0]
        # WordNet also lists some plurals as nouns ("fields", "lots", "woods"): the lookup table
        # picks the usual reading, and "grass", "species", "building" stay as they are.
        if lookup_lemma in forms:
            return lookup_lemma
        reduced = [f for f in forms if f != word]
        return reduced[0] if reduced else word

    def _word(self, word: str, lookup_lemma: str) -> _Word:
        noun = self._noun_lemma(word, lookup_lemma)
        verb_forms = self._forms(word, "verb")
        adjective = bool(self._forms(word, "adj"))
        adverb = word in self._index["adv"] or word in self._exceptions["adv"]
        if noun is None and not (verb_forms or adjective or adverb):
            return self._unknown(word)
        return _Word(noun=noun, plural=noun is not None and noun != word,
                     adjective=adjective, verb=bool(verb_forms), base_verb=word in self._index["verb"],
                     inflected_verb=word.endswith(("ing", "ed")) and any(f != word for f in verb_forms),
                     adverb=adverb)

    @staticmethod
    def _unknown(word: str) -> _Word:
        """A word WordNet lacks is a noun, as a trained tagger mostly reads one ("bareland", "cropland"),
        unless it is shaped like a participle or an adverb ("semisurrounded", "scatteredly")."""
        if word.endswith(("ed", "ly")):
            return _Word(None, False, False, False, False, False, False, unknown=True)
        lemma = word[:-1] if word.endswith("s") and not word.endswith(("ss", "us", "is")) else word
        return _Word(lemma, lemma != word, False, False, False, False, False, unknown=True)

    def tags(self, doc) -> list[tuple[str, str | None]]:
        """(tag, noun lemma) per token: NOUN, MODIFIER (can modify a noun) or OTHER."""
        tokens = [t.lower_ for t in doc]
        words = [self.word(t.lower_, t.lemma_.lower()) if _is_word(t) else None for t in doc]
        hyphens = _hyphen_joins(doc)
        predicative = self._predicative(tokens, words)
        tags: list[tuple[str, str | None]] = [(OTHER, None)] * len(tokens)
        # leads[i]: token i starts a run of modifiers that ends in a noun (or is that noun)
        leads = [False] * (len(tokens) + 2)
        for i in range(len(tokens) - 1, -1, -1):
            if i in hyphens or (i + 1 in hyphens and words[i] is not None):
                # "high-rise buildings", "green-blue water": the compound's parts modify what follows
                tags[i] = (MODIFIER, None)
            elif i - 1 in hyphens and words[i] is not None and leads[i + 1]:
                tags[i] = (MODIFIER, None)
            else:
                tags[i] = self._decide(tokens, words, predicative, tags, leads, hyphens, i)
            leads[i] = (tags[i][0] == NOUN or (tags[i][0] == MODIFIER and leads[i + 1])
                        or tokens[i] in _STOP_HEADS)  # "a large amount of": a head, if not a concept
        return tags

    @staticmethod
    def _predicative(tokens, words) -> list[bool]:
        """Whether each token sits in a predicate-adjective stretch ("are green and lush")."""
        out, active = [], False
        for lower, word in zip(tokens, words):
            out.append(active)
            if lower in _PREDICATE_OPENERS:
                active = True
            elif not (lower in _PREDICATE_LINKS or (word is not None and (word.adjective or word.adverb))):
                active = False
        return out

    def _decide(self, tokens, words, predicative, tags, leads, hyphens, i) -> tuple[str, str | None]:
        word = words[i]
        if word is None:
            return OTHER, None
        if word.noun is None:
            return (MODIFIER, None) if word.adjective else (OTHER, None)
        if word.unknown and i > 0 and tokens[i - 1] in _AUXILIARIES:
            return OTHER, None  # "is semisurounded": a misspelt participle
        if not word.ambiguous:
            return NOUN, word.noun
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if leads[i + 1]:
            return (MODIFIER, None) if word.adjective else (NOUN, word.noun)
        coordinated = (after in _PREDICATE_LINKS and i + 2 < len(tokens) and tags[i + 2][0] == MODIFIER
                       and leads[i + 2] and (i == 0 or tokens[i - 1] not in _ARTICLES))
        if word.adjective and (predicative[i] or after in ("one", "ones") or coordinated):
            return MODIFIER, None
        if word.verb and self._verb_here(tokens, words, i, after, compound_before=i - 2 in hyphens):
            return OTHER, None
        return NOUN, word.noun

    @staticmethod
    def _verb_here(tokens, words, i, after, compound_before: bool) -> bool:
        word = words[i]
        if after in _OBJECT_OPENERS:
            return True
        if (i > 0 and tokens[i - 1] in _AUXILIARIES and (word.inflected_verb or word.base_verb)
                and (i < 2 or tokens[i - 2] != "there")):  # "is lying", "are surround"; not "there is land"
            return True
        if after and after not in _PREPOSITIONS and any(c.isalnum() for c in after):
            return False
        before = words[i - 1] if i > 0 and not compound_before else None  # "high-rise building": a modifier
        if before is None or before.noun is None or before.adjective:
            return False
        return word.inflected_verb or (word.base_verb and before.plural)

    def nouns(self, doc) -> Nouns:
        tags = self.tags(doc)
        nouns = [lemma for tag, lemma in tags if tag == NOUN]
        phrases, run = [], []  # run: (tag, text with its spacing, noun lemma) of modifiers* nouns+
        for token, (tag, lemma) in zip(doc, tags):
            if tag == OTHER or (tag == MODIFIER and run and run[-1][0] == NOUN):
                phrases.append(_phrase(run))
                run = []
            if tag != OTHER:
                run.append((tag, token.lower_ + token.whitespace_, lemma))
        phrases.append(_phrase(run))
        return Nouns(_unique(nouns), _unique(p for p in phrases if p))


def _phrase(run: list[tuple[str, str, str | None]]) -> str | None:
    """"dense residential area" from a run; trailing modifiers belong to no noun."""
    while run and run[-1][0] != NOUN:
        run = run[:-1]
    if len(run) < 2:
        return None
    modifiers = " ".join("".join(text for _, text, _ in run[:-1]).split())
    return f"{modifiers} {run[-1][2]}"
