"""The built-in Chinese→English corpus: sentences generated from a small grammar and lexicon.

The paper trains on WMT 2014 English–German and English–French (Vaswani et al., 2017, §5.1);
those need a download and a GPU. This corpus needs neither. It covers the things that make
translation more than a word-by-word lookup:

- word order: Chinese puts time and place before the verb, English after it
  (我昨天在北京买了三本书 → I bought three books in Beijing yesterday);
- aspect and tense (了, 正在, 会, 不/没) becoming inflection and auxiliaries (bought, is buying,
  will buy, did not buy, does not buy), with agreement (he buys / they buy, I am / you are);
- measure words (三本书, 两杯咖啡) becoming plurals and "cups of", a/an, and irregular plurals;
- possessives (我朋友的猫 → my friend's cat), adjectives, and yes/no questions with 吗.

Every Chinese sentence has exactly one English reference. The splits are fixed: the valid and
test splits hold (subject, verb, object, time, place) combinations that never occur in the
training split, plus a few verb–object pairs (e.g. 卖 + 自行车, "sell" + "bike") that training
never shows together, so a good test score means the model composes, not memorises.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple


class Pair(NamedTuple):
    """One parallel sentence pair: source, target, and where it came from (Tatoeba credits)."""

    src: str
    tgt: str
    attribution: str = ""


# --------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class Person:
    """Someone who can be a subject or a possessor: 我 / I / my, 我朋友 / my friend / my friend's."""

    zh: str
    en: str
    poss: str  # English possessive determiner: "my", "his", "Xiaoming's"
    third_singular: bool  # takes "buys", "does", "is"
    first_singular: bool = False  # takes "am"


@dataclass(frozen=True)
class Noun:
    zh: str
    sg: str
    pl: str
    mw: str  # measure word (量词); "" for nouns that are never counted (中文, 音乐)
    tags: frozenset[str]
    unit: tuple[str, str] | None = None  # 一杯咖啡 → "a cup of coffee": ("cup", "cups")
    mass: bool = False  # bare 咖啡 → "coffee", not "coffees"


@dataclass(frozen=True)
class Verb:
    zh: str
    base: str
    s3: str
    past: str
    ing: str
    objects: frozenset[str]  # noun tags it takes
    places: frozenset[str]  # place tags it can happen at
    particle: str = ""  # "listen *to* music", "look *for* my key"
    generic: bool = True  # a bare count object reads as a generic plural ("reads books")


@dataclass(frozen=True)
class Adjective:
    zh: str
    en: str
    tags: frozenset[str]  # noun tags it describes
    attributive_de: bool = False  # 红色的车: needs 的 before the noun


@dataclass(frozen=True)
class Place:
    zh: str
    at: str  # "in Beijing", "at school"
    to: str  # destination after "go to": "Beijing", "school", "the library"
    tag: str


@dataclass(frozen=True)
class Time:
    zh: str
    en: str


def _t(s: str) -> frozenset[str]:
    return frozenset(s.split())


PRONOUNS = [
    Person("我", "I", "my", False, True),
    Person("你", "you", "your", False),
    Person("他", "he", "his", True),
    Person("她", "she", "her", True),
    Person("我们", "we", "our", False),
    Person("你们", "you", "your", False),
    Person("他们", "they", "their", False),
]
NAMES = [
    Person(zh, en, en + "'s", True)
    for zh, en in [
        ("小明", "Xiaoming"), ("小红", "Xiaohong"), ("李华", "Li Hua"), ("王芳", "Wang Fang"),
        ("大卫", "David"), ("玛丽", "Mary"), ("汤姆", "Tom"), ("安娜", "Anna"),
    ]
]
KIN = [
    ("妈妈", "mother"), ("爸爸", "father"), ("朋友", "friend"), ("哥哥", "brother"),
    ("姐姐", "sister"), ("老师", "teacher"), ("同学", "classmate"), ("邻居", "neighbor"),
]


def kin_person(owner: Person, kin: tuple[str, str]) -> Person:
    """我 + 朋友 → 我朋友 'my friend'; names and plurals take 的: 小明的朋友, 他们的朋友."""
    zh = owner.zh + ("的" if owner in NAMES or len(owner.zh) > 1 else "") + kin[0]
    en = f"{owner.poss} {kin[1]}"
    return Person(zh, en, en + "'s", True)


N = Noun
NOUNS = [
    N("书", "book", "books", "本", _t("read goods artifact story colored")),
    N("杂志", "magazine", "magazines", "本", _t("read goods story")),
    N("报纸", "newspaper", "newspapers", "份", _t("read goods")),
    N("信", "letter", "letters", "封", _t("letter")),
    N("笔", "pen", "pens", "支", _t("goods tool artifact colored")),
    N("电脑", "computer", "computers", "台", _t("goods tool artifact machine own")),
    N("手机", "phone", "phones", "部", _t("goods tool artifact machine colored own")),
    N("自行车", "bike", "bikes", "辆", _t("goods vehicle artifact colored ride own")),
    N("车", "car", "cars", "辆", _t("goods vehicle artifact colored big drive own")),
    N("雨伞", "umbrella", "umbrellas", "把", _t("goods tool artifact colored own")),
    N("钥匙", "key", "keys", "把", _t("tool")),
    N("椅子", "chair", "chairs", "把", _t("goods furniture artifact big")),
    N("桌子", "table", "tables", "张", _t("goods furniture artifact big")),
    N("票", "ticket", "tickets", "张", _t("goods")),
    N("照片", "photo", "photos", "张", _t("photo pretty")),
    N("画", "painting", "paintings", "幅", _t("goods pretty")),
    N("衬衫", "shirt", "shirts", "件", _t("goods clothes artifact colored pretty")),
    N("外套", "coat", "coats", "件", _t("goods clothes artifact colored pretty")),
    N("帽子", "hat", "hats", "顶", _t("goods clothes artifact colored pretty")),
    N("鞋", "shoes", "shoes", "双", _t("goods clothes colored pretty"), unit=("pair", "pairs")),
    N("苹果", "apple", "apples", "个", _t("food goods big")),
    N("橘子", "orange", "oranges", "个", _t("food goods")),
    N("香蕉", "banana", "bananas", "根", _t("food goods")),
    N("鸡蛋", "egg", "eggs", "个", _t("food goods")),
    N("蛋糕", "cake", "cakes", "个", _t("food goods big make")),
    N("饺子", "dumpling", "dumplings", "个", _t("food make")),
    N("鱼", "fish", "fish", "条", _t("animal pet food drawable")),
    N("面包", "bread", "bread", "块", _t("food goods"), unit=("piece", "pieces"), mass=True),
    N("咖啡", "coffee", "coffee", "杯", _t("drink goods"), unit=("cup", "cups"), mass=True),
    N("茶", "tea", "tea", "杯", _t("drink goods"), unit=("cup", "cups"), mass=True),
    N("牛奶", "milk", "milk", "杯", _t("drink goods"), unit=("glass", "glasses"), mass=True),
    N("水", "water", "water", "杯", _t("drink"), unit=("glass", "glasses"), mass=True),
    N("果汁", "juice", "juice", "杯", _t("drink goods"), unit=("glass", "glasses"), mass=True),
    N("啤酒", "beer", "beer", "瓶", _t("drink goods"), unit=("bottle", "bottles"), mass=True),
    N("猫", "cat", "cats", "只", _t("animal pet colored big drawable own")),
    N("狗", "dog", "dogs", "只", _t("animal pet colored big drawable own")),
    N("鸟", "bird", "birds", "只", _t("animal pet colored drawable own")),
    N("马", "horse", "horses", "匹", _t("animal big ride drawable own")),
    N("花", "flower", "flowers", "朵", _t("plant goods pretty colored drawable")),
    N("树", "tree", "trees", "棵", _t("plant big drawable")),
    N("房子", "house", "houses", "栋", _t("goods artifact big pretty room drawable")),
    N("房间", "room", "rooms", "个", _t("big room")),
    N("电影", "movie", "movies", "部", _t("watch story")),
    N("歌", "song", "songs", "首", _t("song")),
    N("礼物", "gift", "gifts", "份", _t("gift")),
    N("中文", "Chinese", "Chinese", "", _t("subject"), mass=True),
    N("英语", "English", "English", "", _t("subject"), mass=True),
    N("数学", "math", "math", "", _t("subject"), mass=True),
    N("历史", "history", "history", "", _t("subject"), mass=True),
    N("音乐", "music", "music", "", _t("music"), mass=True),
    N("篮球", "basketball", "basketball", "", _t("ball"), mass=True),
    N("网球", "tennis", "tennis", "", _t("ball"), mass=True),
    N("足球", "football", "football", "", _t("football"), mass=True),
    N("作业", "homework", "homework", "", _t("homework"), mass=True),
]
del N

_ANY = "city home school library park store bookstore restaurant cafe office cinema"
VERBS = [
    Verb("买", "buy", "buys", "bought", "buying", _t("goods gift"), _t("city store")),
    Verb("卖", "sell", "sells", "sold", "selling", _t("goods"), _t("city store")),
    Verb("看", "read", "reads", "read", "reading", _t("read letter"),
         _t("city home school library park bookstore cafe office")),
    Verb("看", "watch", "watches", "watched", "watching", _t("watch"), _t("city home cinema")),
    Verb("借", "borrow", "borrows", "borrowed", "borrowing", _t("read tool vehicle"),
         _t("city library school office")),
    Verb("用", "use", "uses", "used", "using", _t("machine"), _t("city home school library office")),
    Verb("修", "fix", "fixes", "fixed", "fixing", _t("machine vehicle furniture"),
         _t("city home office"), generic=False),
    Verb("洗", "wash", "washes", "washed", "washing", _t("clothes vehicle"), _t("city home"),
         generic=False),
    Verb("吃", "eat", "eats", "ate", "eating", _t("food"), _t("city home school park restaurant cafe")),
    Verb("喝", "drink", "drinks", "drank", "drinking", _t("drink"),
         _t("city home school restaurant cafe office")),
    Verb("写", "write", "writes", "wrote", "writing", _t("letter song"),
         _t("city home school library cafe office")),
    Verb("画", "draw", "draws", "drew", "drawing", _t("drawable"), _t("city home school park")),
    Verb("唱", "sing", "sings", "sang", "singing", _t("song"), _t("city home school park")),
    Verb("听", "listen", "listens", "listened", "listening", _t("song music"),
         _t("city home cafe office park"), particle="to"),
    Verb("拍", "take", "takes", "took", "taking", _t("photo"), _t("city park school")),
    Verb("种", "plant", "plants", "planted", "planting", _t("plant"), _t("city park school")),
    Verb("打扫", "clean", "cleans", "cleaned", "cleaning", _t("room"), _t(""), generic=False),
    Verb("做", "make", "makes", "made", "making", _t("make"), _t("city home restaurant")),
    Verb("做", "do", "does", "did", "doing", _t("homework"), _t("home school library")),
    Verb("学", "study", "studies", "studied", "studying", _t("subject music"),
         _t("city home school library")),
    Verb("教", "teach", "teaches", "taught", "teaching", _t("subject music"), _t("city school")),
    Verb("找", "look", "looks", "looked", "looking", _t("tool pet"), _t("city home school office park"),
         particle="for", generic=False),
    Verb("喂", "feed", "feeds", "fed", "feeding", _t("pet"), _t("city home park")),
    Verb("骑", "ride", "rides", "rode", "riding", _t("ride"), _t("city park school"), generic=False),
    Verb("开", "drive", "drives", "drove", "driving", _t("drive"), _t("city"), generic=False),
    Verb("寄", "send", "sends", "sent", "sending", _t("letter gift"), _t("city")),
    Verb("打", "play", "plays", "played", "playing", _t("ball"), _t("city school park")),
    Verb("踢", "play", "plays", "played", "playing", _t("football"), _t("city school park")),
]
LIKE = Verb("喜欢", "like", "likes", "liked", "liking",
            _t("pet food drink music subject read watch song"), _t(""))
HAVE = Verb("有", "have", "has", "had", "having", _t("own"), _t(""))
GO = Verb("去", "go", "goes", "went", "going", _t(""), _t(_ANY.replace("home ", "")), particle="to")

ATTRIBUTIVE = [  # adjectives before a noun: 三本新书, 一辆红色的车
    Adjective("新", "new", _t("artifact")),
    Adjective("旧", "old", _t("artifact")),
    Adjective("大", "big", _t("big")),
    Adjective("小", "small", _t("big")),
    Adjective("红色", "red", _t("colored"), attributive_de=True),
    Adjective("白色", "white", _t("colored"), attributive_de=True),
    Adjective("黑色", "black", _t("colored"), attributive_de=True),
    Adjective("蓝色", "blue", _t("colored"), attributive_de=True),
]
PREDICATIVE = [  # 这本书很贵 → This book is expensive.
    Adjective("大", "big", _t("big")),
    Adjective("小", "small", _t("big")),
    Adjective("新", "new", _t("artifact")),
    Adjective("旧", "old", _t("artifact")),
    Adjective("贵", "expensive", _t("goods")),
    Adjective("便宜", "cheap", _t("goods")),
    Adjective("漂亮", "beautiful", _t("pretty")),
    Adjective("可爱", "cute", _t("pet")),
    Adjective("干净", "clean", _t("room vehicle clothes")),
    Adjective("好吃", "delicious", _t("food")),
    Adjective("有意思", "interesting", _t("story")),
]
FEELINGS = [  # 我今天很忙 → I am busy today.
    Adjective("忙", "busy", _t("")), Adjective("累", "tired", _t("")),
    Adjective("高兴", "happy", _t("")), Adjective("饿", "hungry", _t("")),
]

PLACES = [
    *[Place(zh, "in " + en, en, "city") for zh, en in [
        ("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("香港", "Hong Kong"),
        ("伦敦", "London"), ("纽约", "New York"), ("东京", "Tokyo"), ("巴黎", "Paris")]],
    Place("家", "at home", "", "home"),
    Place("学校", "at school", "school", "school"),
    Place("图书馆", "in the library", "the library", "library"),
    Place("公园", "in the park", "the park", "park"),
    Place("超市", "at the supermarket", "the supermarket", "store"),
    Place("商店", "at the store", "the store", "store"),
    Place("书店", "at the bookstore", "the bookstore", "bookstore"),
    Place("饭馆", "at the restaurant", "the restaurant", "restaurant"),
    Place("咖啡馆", "at the cafe", "the cafe", "cafe"),
    Place("办公室", "in the office", "the office", "office"),
    Place("电影院", "at the cinema", "the cinema", "cinema"),
]

TIMES = {
    "past": [Time("昨天", "yesterday"), Time("昨天晚上", "last night"),
             Time("上个星期", "last week"), Time("上个月", "last month"),
             Time("去年", "last year"), Time("今天早上", "this morning")],
    "future": [Time("明天", "tomorrow"), Time("明天晚上", "tomorrow evening"),
               Time("下个星期", "next week"), Time("下个月", "next month"), Time("明年", "next year")],
    "progressive": [Time("现在", "now")],
    "habitual": [Time("每天", "every day"), Time("每天晚上", "every evening"),
                 Time("每个星期", "every week"), Time("每个周末", "every weekend")],
    "present": [Time("今天", "today"), Time("现在", "now")],
}

NUMBERS = ["", "一", "两", "三", "四", "五", "六", "七", "八", "九", "十"]
NUMBERS_EN = ["", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# Verb–object pairs that never occur in the training split: the valid/test splits ask the model
# to put together a verb and a noun it has only ever seen apart.
HELD_OUT_PAIRS = frozenset({
    ("卖", "自行车"), ("画", "马"), ("喂", "鸟"), ("洗", "外套"), ("借", "雨伞"), ("喝", "果汁"),
    ("吃", "橘子"), ("修", "手机"), ("买", "帽子"), ("写", "歌"),
})


# --------------------------------------------------------------------------- phrases


def _a_or_an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class NounPhrase:
    """A noun with what Chinese puts before it: 三本新书, 我朋友的猫, 这两杯咖啡, or just 咖啡.

    form: "bare" (咖啡, 书), "num" (三本书), "poss" (我的书) or "dem" (这本书, 那两本书).
    """

    noun: Noun
    form: str = "bare"
    number: int = 0  # "num": 1..10; "dem": 0 (这本书) or 2..10 (这两本书)
    adj: Adjective | None = None
    owner: Person | None = None  # "poss" only
    near: bool = True  # "dem": 这 this/these, or 那 that/those

    @property
    def plural(self) -> bool:
        n = self.noun
        if self.form in ("num", "dem") and self.number:
            return self.number > 1
        if n.unit is not None:
            return self.form != "dem" and n.sg == n.pl and not n.mass  # 我的鞋 → my shoes are
        return self.form == "bare" and not n.mass

    def zh(self) -> str:
        n, a = self.noun, self.adj
        adj = "" if a is None else a.zh + ("的" if a.attributive_de else "")
        if self.form == "bare":
            return adj + n.zh
        if self.form == "poss":
            return self.owner.zh + "的" + adj + n.zh
        num = NUMBERS[self.number] if self.number else ""
        if self.form == "num":
            return num + n.mw + adj + n.zh
        return ("这" if self.near else "那") + num + n.mw + adj + n.zh

    def en(self, indefinite: bool = False) -> str:
        """English; indefinite=True reads a bare count noun as "a car" (for 没有车, 有车吗)."""
        n = self.noun
        head = n.sg if self.adj is None else f"{self.adj.en} {n.sg}"
        if self.form == "bare":
            if n.mass or n.unit is not None:
                return head
            if indefinite:
                return f"{_a_or_an(head)} {head}"
            return n.pl if self.adj is None else f"{self.adj.en} {n.pl}"
        if self.form == "poss":
            return f"{self.owner.poss} {head}"
        many = self.number > 1
        if n.unit is not None:
            head = f"{n.unit[many]} of {head}"
        elif many:
            head = n.pl if self.adj is None else f"{self.adj.en} {n.pl}"
        if self.form == "num":
            det = NUMBERS_EN[self.number] if many else _a_or_an(head)
            return f"{det} {head}"
        if many:
            return f"{'these' if self.near else 'those'} {NUMBERS_EN[self.number]} {head}"
        return f"{'this' if self.near else 'that'} {head}"


@dataclass(frozen=True)
class Clause:
    """One sentence before it is written out in either language.

    kind: "act" (他买了三本书), "go" (他去了北京), "have" (他有两只猫),
    "describe" (这本书很贵; subject is a NounPhrase) or "feel" (我今天很忙).
    tense: "past" (了/没), "progressive" (正在), "future" (会), "habitual" (plain verb),
    "present" (describe/feel only).
    """

    kind: str
    subject: Person | NounPhrase
    tense: str = "habitual"
    verb: Verb | None = None
    obj: NounPhrase | None = None
    adj: Adjective | None = None
    very: bool = False  # 非常 → "very"; the plain 很 of 我很忙 is not translated
    negative: bool = False
    question: bool = False
    time: Time | None = None
    place: Place | None = None  # where it happens, or where 去 goes


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _render_zh(c: Clause) -> str:
    s = c.subject.zh if isinstance(c.subject, Person) else c.subject.zh()
    s += c.time.zh if c.time else ""
    if c.kind in ("describe", "feel"):
        will = "会" if c.tense == "future" else ""
        if c.negative:
            mid = ("不会" if will else "不") + c.adj.zh
        elif c.question:
            mid = will + c.adj.zh
        else:
            mid = will + ("非常" if c.very else "很") + c.adj.zh
        return s + mid + ("吗？" if c.question else "。")
    obj = c.obj.zh() if c.obj is not None else ""
    if c.kind == "go":
        head = {"past": "没去" if c.negative else "去了", "future": "不会去" if c.negative else "会去",
                "habitual": "不去" if c.negative else "去"}[c.tense]
        return s + head + c.place.zh + ("吗？" if c.question else "。")
    if c.kind == "have":
        return s + ("没有" if c.negative else "有") + obj + ("吗？" if c.question else "。")
    place = "在" + c.place.zh if c.place else ""
    v = c.verb.zh
    if c.tense == "past":
        vp = "没" + place + v + obj if c.negative else place + v + "了" + obj
    elif c.tense == "progressive":  # 正在看书, but 正在图书馆看书 (正 + 在图书馆)
        vp = ("正" + place if place else "正在") + v + obj
    elif c.tense == "future":
        vp = ("不会" if c.negative else "会") + place + v + obj
    else:
        vp = ("不" if c.negative else "") + place + v + obj
    return s + vp + ("吗？" if c.question else "。")


def _render_en(c: Clause) -> str:
    if isinstance(c.subject, Person):
        subj = c.subject.en
        sg3, first = c.subject.third_singular, c.subject.first_singular
    else:
        subj = c.subject.en()
        sg3, first = not c.subject.plural, False
    be = "am" if first else "is" if sg3 else "are"
    was = "was" if (first or sg3) else "were"
    words: list[str]
    if c.kind in ("describe", "feel"):
        adj = ("very " if c.very else "") + c.adj.en
        cop = {"present": be, "past": was, "future": "will"}[c.tense]
        if c.question:
            words = [cop, subj, "be", adj] if c.tense == "future" else [cop, subj, adj]
        else:
            words = [subj, cop, "not" if c.negative else "", "be" if c.tense == "future" else "", adj]
    else:
        v = c.verb
        do = "does" if sg3 else "do"
        if c.kind == "have":  # present only: has / does not have / does ... have
            if c.question:
                pre, main = [do, subj], v.base
            elif c.negative:
                pre, main = [subj, do, "not"], v.base
            else:
                pre, main = [subj], v.s3 if sg3 else v.base
        elif c.question:
            pre, main = {"past": (["did", subj], v.base), "future": (["will", subj], v.base),
                         "progressive": ([be, subj], v.ing),
                         "habitual": ([do, subj], v.base)}[c.tense]
        elif c.negative:
            pre, main = {"past": ([subj, "did", "not"], v.base),
                         "future": ([subj, "will", "not"], v.base),
                         "habitual": ([subj, do, "not"], v.base)}[c.tense]
        else:
            pre, main = {"past": ([subj], v.past), "future": ([subj, "will"], v.base),
                         "progressive": ([subj, be], v.ing),
                         "habitual": ([subj], v.s3 if sg3 else v.base)}[c.tense]
        words = [*pre, main, v.particle]
        if c.obj is not None:
            words.append(c.obj.en(indefinite=c.kind == "have" and c.obj.form == "bare"))
        if c.place is not None:
            words.append(c.place.to if c.kind == "go" else c.place.at)
        if c.time is not None:
            words.append(c.time.en)
        return _capitalize(" ".join(w for w in words if w)) + ("?" if c.question else ".")
    if c.time is not None:
        words.append(c.time.en)
    return _capitalize(" ".join(w for w in words if w)) + ("?" if c.question else ".")


def render(clause: Clause) -> Pair:
    """Write one clause out as a (Chinese, English) pair."""
    return Pair(_render_zh(clause), _render_en(clause), "tformer built-in corpus")


def combination_key(c: Clause) -> tuple[str, str, str, str, str]:
    """(subject, verb, object, time, place): what the valid/test splits hold out of training."""
    subj = c.subject.zh if isinstance(c.subject, Person) else c.subject.noun.zh
    verb = f"{c.verb.zh}/{c.verb.base}" if c.verb is not None else c.kind
    obj = c.obj.noun.zh if c.obj is not None else (c.adj.zh if c.adj is not None else "")
    return (subj, verb, obj, c.time.zh if c.time else "", c.place.zh if c.place else "")


# --------------------------------------------------------------------------- sampling


def _person(rng: random.Random, allow_i: bool = True, owner: bool = False) -> Person:
    """A subject; owner=True for a possessor, which must not need a second 的 (我朋友的猫)."""
    r = rng.random()
    if r < 0.45:
        return rng.choice([p for p in PRONOUNS if allow_i or p.zh != "我"])
    if r < 0.7:
        return rng.choice(NAMES)
    if owner:
        return kin_person(rng.choice([p for p in PRONOUNS if len(p.zh) == 1]), rng.choice(KIN))
    who = rng.choice(PRONOUNS) if rng.random() < 0.7 else rng.choice(NAMES)
    return kin_person(who, rng.choice(KIN))


def _number(rng: random.Random) -> int:
    return rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10])


def _modifier(rng: random.Random, noun: Noun, allow_de: bool = True) -> Adjective | None:
    if rng.random() > 0.3:
        return None
    options = [a for a in ATTRIBUTIVE if a.tags & noun.tags and (allow_de or not a.attributive_de)]
    return rng.choice(options) if options else None


def _noun_phrase(rng: random.Random, noun: Noun, forms: list[str]) -> NounPhrase:
    form = rng.choices(forms, weights=[{"num": 40, "bare": 25, "poss": 20, "dem": 15}[f]
                                       for f in forms])[0]
    if form == "bare":
        return NounPhrase(noun)
    if form == "num":
        return NounPhrase(noun, "num", _number(rng), _modifier(rng, noun))
    if form == "poss":  # one 的 only: 我的新车, but not 我朋友的红色的车
        return NounPhrase(noun, "poss", 0, _modifier(rng, noun, allow_de=False),
                          owner=_person(rng, owner=True))
    number = rng.choice([0, 0, 0, 2, 3, 4, 5])
    return NounPhrase(noun, "dem", number, _modifier(rng, noun), near=rng.random() < 0.6)


def _sample_act(rng: random.Random) -> Clause:
    verb = rng.choice([*VERBS, LIKE])
    noun = rng.choice([n for n in NOUNS if n.tags & verb.objects])
    if verb is LIKE:  # a state: no 了, no 正在, no time or place
        tense = "habitual"
    else:
        tense = rng.choices(["past", "future", "progressive", "habitual"], [35, 20, 15, 30])[0]
    question = rng.random() < 0.2
    negative = not question and tense != "progressive" and rng.random() < 0.25
    time = None
    if not (tense == "habitual" and negative) and verb is not LIKE and rng.random() < 0.6:
        time = rng.choice(TIMES[tense])
    places = [p for p in PLACES if p.tag in verb.places]
    place = rng.choice(places) if places and rng.random() < 0.5 else None
    countable = noun.mw != ""
    forms = []
    # numbers only where a count is natural: not with 不/没 or 喜欢, and in habits only for
    # eating and drinking (他每天喝两杯咖啡)
    habit = tense == "habitual"
    if countable and not negative and verb is not LIKE and (not habit or verb.zh in "吃喝"):
        forms.append("num")
    # a bare count noun reads as a generic plural, natural in habits and denials
    # (他每天看书 → He reads books every day; 他不会买书 → He will not buy books)
    if noun.mass or (verb.generic and (habit or negative)):
        forms.append("bare")
    if (countable and not (habit and verb.zh in "吃喝")) or "homework" in noun.tags:
        forms.append("poss")
    if countable and tense != "habitual":
        forms.append("dem")
    if not forms:
        return _sample_act(rng)
    subject = _person(rng, allow_i=not question)
    obj = _noun_phrase(rng, noun, forms)
    return Clause("act", subject, tense, verb, obj, negative=negative, question=question,
                  time=time, place=place)


def _sample_go(rng: random.Random) -> Clause:
    tense = rng.choices(["past", "future", "habitual"], [40, 30, 30])[0]
    question = rng.random() < 0.2
    negative = not question and rng.random() < 0.25
    dests = [p for p in PLACES if p.tag in GO.places and not (tense == "habitual" and p.tag == "city")]
    time = None
    if not (tense == "habitual" and negative) and rng.random() < 0.7:
        time = rng.choice(TIMES[tense])
    return Clause("go", _person(rng, allow_i=not question), tense, GO, negative=negative,
                  question=question, time=time, place=rng.choice(dests))


def _sample_have(rng: random.Random) -> Clause:
    noun = rng.choice([n for n in NOUNS if "own" in n.tags])
    question = rng.random() < 0.25
    negative = not question and rng.random() < 0.3
    if negative or (question and rng.random() < 0.5):  # 他没有车 / 你有车吗
        obj = NounPhrase(noun, "bare", 0, _modifier(rng, noun))
    else:
        obj = NounPhrase(noun, "num", _number(rng), _modifier(rng, noun))
    return Clause("have", _person(rng, allow_i=not question), "habitual", HAVE, obj,
                  negative=negative, question=question)


def _sample_describe(rng: random.Random) -> Clause:
    adj = rng.choice(PREDICATIVE)
    noun = rng.choice([n for n in NOUNS if n.tags & adj.tags and n.mw])
    if rng.random() < 0.5:
        subject = NounPhrase(noun, "poss", owner=_person(rng, owner=True))
    else:
        subject = NounPhrase(noun, "dem", rng.choice([0, 0, 0, 2, 3]), near=rng.random() < 0.6)
    question = rng.random() < 0.2
    negative = not question and rng.random() < 0.2
    very = not (question or negative) and rng.random() < 0.3
    return Clause("describe", subject, "present", adj=adj, very=very, negative=negative,
                  question=question)


def _sample_feel(rng: random.Random) -> Clause:
    tense = rng.choices(["present", "past", "future"], [40, 35, 25])[0]
    question = rng.random() < 0.2
    negative = not question and tense != "future" and rng.random() < 0.25
    very = not (question or negative) and rng.random() < 0.3
    time = None
    if tense == "past" or rng.random() < 0.6:  # the past needs a time word: 我昨天很累
        time = rng.choice(TIMES[tense])
    return Clause("feel", _person(rng, allow_i=not question), tense, adj=rng.choice(FEELINGS),
                  very=very, negative=negative, question=question, time=time)


_KINDS = [(_sample_act, 64), (_sample_go, 10), (_sample_have, 7), (_sample_describe, 11),
          (_sample_feel, 8)]
MAX_ZH_CHARS = 20  # keep sentences short so a small model learns them in minutes


def sample_clause(rng: random.Random) -> Clause:
    """Draw one random clause (its Chinese is at most MAX_ZH_CHARS characters)."""
    samplers, weights = zip(*_KINDS)
    while True:
        c = rng.choices(samplers, weights)[0](rng)
        if len(_render_zh(c)) <= MAX_ZH_CHARS + 1:  # + the final 。 or ？
            return c


def _generate(n: int, seed: int) -> list[tuple[Clause, Pair]]:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int (the number of pairs to generate)")
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    out: list[tuple[Clause, Pair]] = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        c = sample_clause(rng)
        pair = render(c)
        if pair.src in seen:
            if seen[pair.src] != pair.tgt:  # one Chinese sentence, one English reference
                raise AssertionError(f"{pair.src} has two translations: {seen[pair.src]!r}, {pair.tgt!r}")
            continue
        seen[pair.src] = pair.tgt
        out.append((c, pair))
    raise ValueError(f"n={n} is more distinct sentences than the grammar produces quickly")


def generate_pairs(n: int, seed: int = 0) -> list[Pair]:
    """n distinct (Chinese, English) pairs; the same seed always gives the same pairs."""
    return [p for _, p in _generate(n, seed)]


# --------------------------------------------------------------------------- fixed splits

POOL_SIZE = 36_000
SPLIT_SEED = 2017
SPLIT_SIZE = 1000  # valid and test each
HELD_OUT_PAIR_SHARE = 200  # of each of valid/test: sentences with a verb–object pair never trained


def _unit_hash(*parts: str) -> float:
    """A hash in [0, 1) that is the same on every machine and Python run (unlike hash())."""
    return zlib.crc32("\x1f".join(parts).encode()) / 2**32


def _split_of(c: Clause) -> str:
    key = combination_key(c)
    u = _unit_hash(*key)
    if c.verb is not None and c.obj is not None and (c.verb.zh, c.obj.noun.zh) in HELD_OUT_PAIRS:
        return "valid_pair" if u < 0.5 else "test_pair"
    if u < 0.035:
        return "valid"
    if u < 0.07:
        return "test"
    return "train"


@lru_cache(maxsize=1)
def _pool() -> tuple[tuple[Clause, Pair], ...]:
    return tuple(_generate(POOL_SIZE, SPLIT_SEED))


@lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[Pair, ...]]:
    groups: dict[str, list[Pair]] = {"train": [], "valid": [], "test": [], "valid_pair": [],
                                     "test_pair": []}
    for c, pair in _pool():
        groups[_split_of(c)].append(pair)
    rng = random.Random(SPLIT_SEED)
    out = {"train": tuple(groups["train"])}
    for name in ("valid", "test"):
        held = rng.sample(groups[name + "_pair"], HELD_OUT_PAIR_SHARE)
        rest = rng.sample(groups[name], SPLIT_SIZE - HELD_OUT_PAIR_SHARE)
        mixed = held + rest
        rng.shuffle(mixed)
        out[name] = tuple(mixed)
    return out


@lru_cache(maxsize=1)
def _clause_index() -> dict[str, Clause]:
    return {pair.src: c for c, pair in _pool()}


def builtin_clause(src: str) -> Clause:
    """The grammar behind one built-in Chinese sentence (its kind, tense, verb, object...),
    for error analysis: e.g. ``builtin_clause(s).tense`` or whether (verb, noun) is held out."""
    try:
        return _clause_index()[src]
    except KeyError:
        raise ValueError(f"src={src!r} is not a sentence of the built-in corpus") from None


def uses_held_out_pair(src: str) -> bool:
    """True if this built-in sentence pairs a verb and an object noun that training never pairs."""
    c = builtin_clause(src)
    return c.verb is not None and c.obj is not None and (c.verb.zh, c.obj.noun.zh) in HELD_OUT_PAIRS


def builtin_splits() -> dict[str, list[Pair]]:
    """The fixed train/valid/test splits of the built-in corpus (computed once, then cached)."""
    return {k: list(v) for k, v in _splits().items()}


def load_builtin(split: str = "train") -> list[Pair]:
    """One split of the built-in Chinese→English corpus: "train", "valid" or "test"."""
    splits = _splits()
    if split not in splits:
        raise ValueError(f"split={split!r} is not a split of the built-in corpus; "
                         f"expected one of {sorted(splits)}")
    return list(splits[split])
