"""Derived product categories: an ordered keyword taxonomy over product titles.

The Online Retail data has NO category column. Every category in this project is DERIVED from
the product's description (its canonical title, see `loaders/online_retail.py`) by the rules
below, and must be presented as derived, never as the retailer's own classification.

How: the title is upper-cased and every character other than A-Z/0-9 becomes a space
(`"T-LIGHT"` -> `"T LIGHT"`, `"SET/6"` -> `"SET 6"`). `RULES` is an ordered list of
(category, patterns); the FIRST rule with a matching pattern wins, so specific phrases and
seasonal themes come before broad product words (`"CHRISTMAS CANDLE"` is `christmas`,
`"CAKE STAND"` is `kitchen` before `"STAND"` could mean anything). A pattern is one or more
whole words that must appear consecutively; a word ending in `*` matches any word starting
with it (`CANDLE*` matches CANDLE, CANDLES, CANDLEHOLDER). No rule matches: `other`.

The function is pure and deterministic: same text, same slug, no I/O, no state besides a cache.
Slugs are short, lowercase, `[a-z0-9_-]`, stable (they become affinity keys `cat:<slug>`).
"""

from __future__ import annotations

import re
from functools import lru_cache

OTHER = "other"

# (category slug, comma-separated patterns). Order matters: first match wins. Three tiers:
#   1. Christmas (the shop's dominant season) and candles/lights (unambiguous product words);
#   2. unambiguous phrases of every category ("CAKE STAND", "TEA TOWEL", "PHOTO FRAME"...), so
#      a phrase beats any single word ("CUSHION COVER FAIRY CAKE" is textiles, not kitchen);
#   3. single product words, most specific categories first, decorative catch-alls last.
# Design and material names (SPACEBOY, RETROSPOT, ZINC, CERAMIC, CANDY...) are NOT keywords.
RULES: tuple[tuple[str, str], ...] = (
    # -- tier 1 ---------------------------------------------------------------------------------
    (
        "christmas",
        """
        CHRISTMAS, XMAS, ADVENT, NATIVITY, SANTA*, REINDEER, SNOWFLAKE*, SNOWMAN, SNOWMEN, SNOW,
        BAUBLE*, TINSEL, NOEL, YULETIDE, MISTLETOE, HOLLY, SLEIGH, STOCKING, JINGLE BELL*,
        GINGERBREAD
    """,
    ),
    (
        "candles_lights",
        """
        CANDLE*, T LIGHT*, TLIGHT*, TEALIGHT*, TEA LIGHT*, LANTERN*, LAMP, LAMPS, LAMPSHADE*,
        LAMP SHADE*, NIGHT LIGHT*, NIGHTLIGHT*, INCENSE, OIL BURNER*, FRAGRANCE OIL*, VOTIVE*,
        CANDELABRA, CANDLESTICK*, LIGHT CHAIN, LIGHT GARLAND, FAIRY LIGHT*, STRING LIGHT*,
        LIGHTS, TABLE LIGHT, BEDSIDE LIGHT, 20LIGHT, LED, TORCH, CHANDELIER, HURRICANE LAMP
    """,
    ),
    # -- tier 2: phrases -----------------------------------------------------------------------
    (
        "clocks",
        """
        CLOCK*, ALARM
    """,
    ),
    (
        "signs",
        """
        SIGN, SIGNS, DOORSIGN*, PLAQUE*, DOOR NUMBER*, NUMBER TILE*, HOUSE NUMBER*, BLACKBOARD,
        CHALKBOARD, SLATE TILE
    """,
    ),
    (
        "textiles",
        """
        HOT WATER BOTTLE*, HOTTIE, TEA TOWEL*, TEATOWEL*, OVEN GLOVE*, OVEN MITT*, CUSHION
        COVER*, C COVER, FILLER PAD*, FLOOR CUSHION*, SEAT CUSHION*, IRONING BOARD COVER, TABLE
        CLOTH*, TABLECLOTH*, TABLE RUN*
    """,
    ),
    (
        "kitchen",
        """
        EGG CUP*, EGG COSY, EGG WARMER*, EGG HOLDER, EGG FRYING PAN, EGG PAN, EGG SPOON, EGG
        BOX, EGG HOUSE, EGG SHAPE MIXING BOWLS, CAKE STAND*, CAKESTAND*, CAKE CASES, BAKING
        CASES, PETIT FOUR CASES, CAKE TIN*, LUNCH BOX*, LUNCHBOX*, FOOD COVER*, FOOD CONTAINER*,
        STORAGE JAR*, BISCUIT TIN*, BISCUIT BARREL, BREAD BIN*, TEA COSY, MUG COSY, TEA CADDY,
        COFFEE CADDY, NAPKIN RING*, NAPKIN CHARM*, PLACE SETTING*, DOILIES, DOILY, COOKIE
        CUTTER*, BISCUIT CUTTER*, CHOPSTICKS, JAM MAKING, MEASURING SPOON*, MEASURING JUG,
        MEASURING JAR, KITCHEN SCALES, FRUIT BOWL, FRUITBOWL, TOAST RACK, TOASTRACK, SPICE TIN*,
        HERB TINS, DINNER TRAY, COASTER*, PLACEMAT*, PLACE MAT*, BOTTLE OPENER, WINE GLASS*,
        CHAMPAGNE GLASS*, MILK JUG, SUGAR BOWL, TEA SET, COFFEE SET, TEA GLASS, SUNDAE DISH,
        BUTTER DISH, CHEESE DISH, CAKE COVER, CUP AND SAUCER, CUP SAUCER, LOLLY MOULD*, LOLLY
        MAKER*, ICE LOLLY, JELLY MOULD*, BAKING MOULD*, CAT BOWL, DOG BOWL, ROLLING PIN,
        CHOPPING BOARD*, RECIPE BOX*, PICNIC BOXES, SNACK BOXES, TEA TIME TEA SET, CAKE SHOP,
        WASHING UP*, BALLOON WHISK, TEA BAG*
    """,
    ),
    (
        "bathroom",
        """
        SOAP DISH, TOILET ROLL*, TISSUE BOX*, BATHROOM SCALES, LIP GLOSS, PLASTERS, WASH BAG,
        WASHBAG, COSMETIC BAG, MAKE UP BAG, TOILETTE, BATH SPONGE, EMERY BOARD*, NAIL FILE*,
        COTTON WOOL, ESSENTIAL BALM
    """,
    ),
    (
        "accessories",
        """
        BAG CHARM*, PHONE CHARM*, KEY RING*, KEYRING*, KEY FOB*, KEY CHAIN*, LUGGAGE TAG*, CARD
        WALLET, CARD HOLDER WALLET, PASSPORT COVER*, VIPPASSPORT COVER, RING PURSE, HAIR CLIP*,
        HAIRCLIP*, HAIR SLIDE*, HAIRSLIDE*, HAIR GRIP*, HAIR BAND*, HAIRBAND*, HAIR COMB*, HAND
        WARMER*, POCKET WARMER, COMPACT MIRROR*, POCKET MIRROR*, BADGE*, EAR MUFF*, SUNGLASSES,
        UMBRELLA*, GLASSES CASE, FLOWER CLUSTER SLIDE, LEIS
    """,
    ),
    (
        "toys",
        """
        SWIRLY MARBLES, MARBLES, SKITTLES, DOMINOES, PLAYING CARDS, JIGSAW*, PUZZLE*, SOFT TOY*,
        PLAYHOUSE, DRAWING SLATE, SPINNING TOP*, SKIPPING ROPE, SKIPPPING ROPE, BINGO, SNAKES
        LADDERS, SNAKES AND LADDERS, LUDO, STRESS BALL, TEDDY*, SOCK PUPPET*, CATCH CUP GAME,
        ROCKING HORSE, FLYING DISC, HELICOPTER, CREEPY CRAWLIE*, SNAKE SET, DINOSAUR SET,
        FARMYARD ANIMALS, RACING CAR, HARMONICA, DOLLS HOUSE, DOLLHOUSE, SNAP CARDS, CARD GAME,
        PARTY GAMES
    """,
    ),
    (
        "home_decor",
        """
        CARD HOLDER*, CARDHOLDER*, ASHTRAY*, UMBRELLA STAND
    """,
    ),
    (
        "party",
        """
        HEN PARTY, GIFT WRAP*, WRAP, WRAPS, WRAPPING PAPER, GIFT TAG*, GIFT BAG*, PARTY BAG*,
        BIRTHDAY CARD*, GREETING CARD*, PAPER NAPKINS, PAPER CUPS, PAPER PLATES, NAPKINS, PARTY
        INVITES, INVITES, CONFETTI, BUNTING, BALLOON*, PAPER CHAIN*, HONEYCOMB, RIBBON*,
        CRACKER*, GIFT SACK, CARD, CARDS, PARTY CONE*, PARTY HAT*, TISSUE PAPER, TISSUE REAM
    """,
    ),
    (
        "stationery",
        """
        PHOTO ALBUM*, ALBUM*, ADDRESS BOOK*, NOTEBOOK*, NOTE BOOK*, POCKET BOOK*, EXERCISE
        BOOK*, PENCIL*, PEN, PENS, STICKER*, WRITING SET*, STATIONERY, ERASER*, RULER*, LETTER
        RACK, LETTER TRAY, MEMO BOARD*, MEMOBOARD*, MEMO HOLDER, PAPERWEIGHT*, P WEIGHT,
        CRAYON*, CHALK STICKS, COLOURING SET, STAMP SET, SHOPPING LIST, NOTEPAD*, NOTELETS, HOLE
        PUNCH, TAPE DISPENSER, CALCULATOR, ENVELOPE*, POSTCARD*, SCRAP BOOK*, SCRAPBOOK*
    """,
    ),
    (
        "crafts",
        """
        TAPE MEASURE*, MEASURING TAPE*, SEWING*, KNITTING*, FELTCRAFT, CRAFT KIT*, MAKE YOUR
        OWN, PAINT YOUR OWN, IRON ON, PATCHES, DECOUPAGE, MODELLING CLAY, PIN CUSHION*,
        PINCUSHION*
    """,
    ),
    (
        "garden",
        """
        WATERING CAN*, GARDEN TOOL*, GARDEN MARKER*, HERB MARKER*, GNOME*, BIRDHOUSE*, BIRD
        HOUSE*, BIRD FEEDER*, BIRD TABLE*, BIRDCAGE PLANT, PLANT CAGE, PLANTER*, PLANT POT*,
        PLANT HOLDER, FLOWER POT*, FLOWERPOT*, GARDEN THERMOMETER, GARDEN PARASOL, GARDEN FORK,
        GARDEN TROWEL, GARDEN SET, GARDEN GLOVES, GARDEN SECATEURS, WINDMILL*, WINDCHIME*, WIND
        CHIME*, KNEELING PAD*, KNEELING MAT, GROW YOUR OWN, GROW A, SOW, SECATEURS, TROWEL*,
        CROQUET, ROUNDERS, PICNIC BAG*, PICNIC BASKET*, PICNIC HAMPER*, SEED ENVELOPE*, TWINE,
        HAMMOCK*, DOVECOTE, FLY SWAT, WHEELBARROW, PLANT LADDER, HERB GARDEN
    """,
    ),
    (
        "storage",
        """
        JEWELLERY BOX*, JEWEL BOX*, JEWELLERY STAND*, JEWEL STAND*, JEWELLERY DRAWER*, JEWELLERY
        CASE*, TRINKET BOX*, TRINKET POT*, TRINKET TRAY*, KEEPSAKE BOX*, MONEY BOX*, MONEY
        BANK*, PIGGY BANK*, STORAGE BOX*, STORAGE TIN*, STORAGE CUBE*, STORAGE BASKET*, STORAGE
        HANGER, WALL TIDY, SHOE TIDY, TOY TIDY, OFFICE TIDY, WASTE BIN, WASTEPAPER BIN, KEY
        CABINET, KEY HOLDER, LETTER HOLDER, MAGAZINE RACK*, NESTING BOXES, BOOK BOX*, KNICK
        KNACK TINS, STACKING TINS, WALL ORGANISER, KITCHEN ORGANISER, UTENSIL HOLDER, CHEST OF
        DRAWERS, TREASURE CHEST*, PILL BOX*
    """,
    ),
    (
        "home_decor",
        """
        DRAWER KNOB*, DRAWERKNOB*, PHOTO FRAME*, PHOTOFRAME*, PICTURE FRAME*, RECORD FRAME, WALL
        MIRROR*, FABRIC MIRROR, WALL ART, DOORMAT*, DOOR MAT*, DOORSTOP*, DOOR STOP*, DOOR
        HANGER*, COAT RACK*, COAT HANGER*, COATHANGER*, PEG HANGER, HOOK HANGER, FRIDGE MAGNET*,
        MAGNET, MAGNETS, ARTIFICIAL FLOWER*, ARTIIFCIAL FLOWER*, ART FLOWER*, SUCTION HOOK*,
        SUCTION CUP HOOK*, WALL THERMOMETER, PHOTO CLIP*, WOOD LETTERS, BLOCK LETTERS, PAINTED
        LETTERS, BUILDING BLOCK WORD, CANVAS ART, CLOCHE*, BELL JAR, VASE*, CRYSTAL HEART*,
        PEARL HEART*, JEWELLED HEART*, HANGING JEWEL, JEWELLED MIRROR, JEWEL ANGEL, JEWEL
        ICICLE, WALLHANGING, WALL HANGING, STRING CURTAIN, BEAD CURTAIN, DISCO BALL, DOORBELL,
        MIRROR MOBILE, HEART DECORATION, TREE DECORATION
    """,
    ),
    # -- tier 3: single product words ----------------------------------------------------------
    (
        "easter",
        """
        EASTER, CHICK, CHICKS, EGG, EGGS, HEN, HENS
    """,
    ),
    (
        "jewellery",
        """
        NECKL*, EARRING*, BRACELET*, BRACLET, BANGLE*, PENDANT*, BROOCH*, RING, RINGS, TIARA*,
        ANKLET*, CHOKER, LARIAT, CUFFLINK*, JEWELLERY SET, JEWELLERY, CHARM BRACELET
    """,
    ),
    (
        "bags",
        """
        BAG, BAGS, HANDBAG*, SHOPPER*, TOTE*, RUCKSACK*, BACKPACK*, SATCHEL*, HOLDALL
    """,
    ),
    (
        "accessories",
        """
        WALLET*, PURSE*, SCARF*, GLOVE, GLOVES, HAT, HATS, HAIR, COMB, PASSPORT*, LUGGAGE, FAN,
        FANS, WATCH, MITTENS, SLIPPER*, SOCKS, BELT, PHONE*, HEADPHONES, SHOE, SHOES
    """,
    ),
    (
        "bathroom",
        """
        BATHROOM, BATH, SOAP*, TOILET*, SPONGE*, TOOTHBRUSH*, TOOTHPASTE, SHOWER, TOWEL*,
        TISSUES, TISSUE, NAIL*, COSMETIC*, MAKE UP, MAKEUP, BALM, HAND CREAM, MANICURE, SHAVING,
        FLANNEL*, PERFUME, MEDICINE, FIRST AID
    """,
    ),
    (
        "textiles",
        """
        CUSHION*, THROW, BLANKET*, QUILT*, PATCHWORK, FABRIC*, CURTAIN*, PILLOW*, CHAIR PAD*,
        SEAT PAD*, DUVET*, BEDSPREAD*, POUFFE
    """,
    ),
    (
        "kitchen",
        """
        KITCHEN, CAKE*, CUPCAKE*, BAKING, BAKE, CUTLERY, MUG, MUGS, CUP, CUPS, SAUCER*, PLATE,
        PLATES, PLATTER*, BOWL, BOWLS, TEA, TEAPOT*, TEACUP*, COFFEE, JAM, PANTRY, APRON*, OVEN,
        TRAY, TRAYS, SPOON*, TEASPOON*, FORK, FORKS, KNIFE, KNIVES, BOTTLE, BOTTLES, JUG, JUGS,
        BEAKER*, TUMBLER*, BREAD*, BISCUIT*, COOKIE*, CUTTER*, MOULD*, RECIPE*, DINNER,
        BREAKFAST, SCALES, MILK, SUGAR, SALT, PEPPER, WINE, GOBLET*, CHAMPAGNE, APERITIF,
        CHALICE, MILKSHAKE, SNACK*, FLASK*, STRAW, STRAWS, PAN, PANS, CASSEROLE, JAR, JARS, TIN,
        TINS, POPCORN, FOOD, DISH, DISHES, SCOOP, WHISK, SIEVE, FUNNEL, GRATER, LADLE, BUTTER,
        TOAST*, COLANDER, SQUEEZER, CORER, STRAINER, SPATULA, CONDIMENT, MICROWAVE, CANNISTER,
        CANISTER*, POT, POTS, COCKTAIL, PIZZA, LOLLY, DOILEY*, CONTAINER*, CADDY, ICE CUBE*, BIB
    """,
    ),
    (
        "stationery",
        """
        DIARY, JOURNAL*, CALENDAR*, BOOKMARK*, BOOK MARK, CHALK, SHARPENER*, MEMO*, PAPER CLIP*,
        STAMPS, TAPE, TAPES, SKETCHBOOK*, BOOK, BOOKS, FOLDER*, LABEL*, RUBBER, RUBBERS, OFFICE
    """,
    ),
    (
        "party",
        """
        PARTY, BIRTHDAY, GREETING*, INVITATION*, WEDDING, CONGRATULATIONS, VALENTINE*, NAPKIN*,
        BANNER*, PINATA, CELEBRATION, FLAGS, GIFT
    """,
    ),
    (
        "toys",
        """
        TOY, TOYS, DOLL, DOLLS, GAME, GAMES, BUBBLES, INFLATABLE, KITE, YO YO, RATTLE, PUPPET*,
        SPINNING, BALL, BALLS, BLOCKS, TATTOO*
    """,
    ),
    (
        "crafts",
        """
        CRAFT*, EMBROIDERY, EMBROIDERED, THREAD*, BUTTON*, CROCHET, STENCIL*, PAINT, PAINTS,
        HABERDASHERY, NEEDLE*, SCISSOR*, KIT, KITS, KNITTED, FELT
    """,
    ),
    (
        "garden",
        """
        GARDEN*, PLANT*, SEED*, GREENHOUSE, POTTING, HOSE, OUTDOOR, PICNIC, HERB*, FEEDER,
        SPADE, RAKE, BEACH
    """,
    ),
    (
        "storage",
        """
        STORAGE, BOX, BOXES, BASKET*, DRAWER*, CABINET*, CUPBOARD*, SIDEBOARD*, CRATE*, TRUNK*,
        CHEST, CHESTS, CASE, CASES, ORGANISER*, TIDY, HAMPER*, BIN, BINS, HOLDER, HOLDERS,
        SHELF, SHELVES, SHELVING, POUCH*, TRINKET*, TUB, TUBS, PEGS, RACK, RACKS
    """,
    ),
    (
        "jewellery",
        """
        BEAD*, CRYSTAL*, DIAMANTE, PEARL*, JEWEL*, CHARM, CHARMS, GEMSTONE*, M O P, DIAMOND*
    """,
    ),
    (
        "home_decor",
        """
        FRAME*, MIRROR*, ORNAMENT*, DECORATION*, DECORATIVE, WREATH*, GARLAND*, KNOB*, HOOK*,
        HANGER*, BELL, BELLS, CHIME*, PICTURE*, CANVAS*, PHOTO*, FEATHER*, HANGING, HEART,
        HEARTS, STAR, STARS, MAGNET*, BUNNY, RABBIT*, BIRD, BIRDS, BUTTERFLY, BUTTERFLIES,
        FLOWER*, ROSE, ROSES, ANGEL*, LETTERS, WORD, LOVE, HOME, WALL, STAND, WINDOW, PARASOL*,
        FLAG*, DOOR, SCULPTURE, FIGURE*, STATUE*, BUST, GLOBE, ALPHABET, CHAIR, TABLE, STOOL,
        MOBILE, SCREEN, THERMOMETER, PONY, SEAT, CLIP, CLIPS, WICKER, DECO, DEC, ORNAMENTAL,
        BUDDHA, HEAD, SHELL, SHELLS, TREE, WINDSOCK, ROSETTE, MUSHROOM, TOADSTOOL*, SPIRAL,
        DOVE, OWL*, CAT, CATS, DOG, DOGS, PIG, FROG, DUCK*
    """,
    ),
)


def _word(word: str) -> str:
    if word.endswith("*"):
        return re.escape(word[:-1]) + "[A-Z0-9]*"
    return re.escape(word)


def _compile(spec: str) -> re.Pattern[str]:
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    alts = [r"\s+".join(_word(w) for w in p.split()) for p in patterns]
    return re.compile(r"(?<![A-Z0-9])(?:" + "|".join(alts) + r")(?![A-Z0-9])")


_COMPILED: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (slug, _compile(spec)) for slug, spec in RULES
)
_NON_ALNUM = re.compile(r"[^A-Z0-9]+")
# Packaging is not the product: "MUG IN GIFT BOX" is a mug, "SKITTLES IN COTTON BAG" skittles.
_PACKAGING = re.compile(
    r"\bIN (?:A |AN )?(?:[A-Z0-9]+ ){0,2}(?:BOX|BOXES|BAG|TUBE|TIN|BUCKET|BASKET|PARCEL|"
    r"ENVELOPE|CRATE|DISPLAY|GAUZE BAG)\b"
)
SLUG_RE = re.compile(r"^[a-z0-9_-]{1,32}$")

CATEGORIES: tuple[str, ...] = (*dict.fromkeys(slug for slug, _ in RULES), OTHER)


def normalize(description: str) -> str:
    """Upper-case; any run of characters other than A-Z0-9 becomes one space."""
    return _NON_ALNUM.sub(" ", description.upper()).strip()


@lru_cache(maxsize=16_384)
def category_for(description: str) -> str:
    """The derived category slug of a product title (`other` when no rule matches)."""
    text = _PACKAGING.sub(" ", normalize(description))
    if not text.strip():
        return OTHER
    for slug, pattern in _COMPILED:
        if pattern.search(text):
            return slug
    return OTHER
