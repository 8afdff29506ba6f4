"""Fixed word lists of the synthetic world (pure data, no randomness)."""

NAMES = (
    "alice bob carol dave erin frank grace heidi ivan judy karl liam mia nora oscar "
    "paul quinn rosa sam tina uma victor wendy xena yuri zoe adam bella chris dana "
    "eli fiona gus hana igor jack kate leo maya nick olga pete rita seth tara "
    "ugo vera will yara zack amir beth cody dora emil faye glen hugo iris joel"
).split()

ANIMALS = "cat dog fish bird horse rabbit mouse snake frog duck goat sheep".split()
COLOURS = "red blue green yellow black white orange purple pink brown grey gold".split()
CITIES = "paris rome oslo lima cairo tokyo delhi quito dakar perth minsk hanoi".split()

# attribute name -> value pool ("friend" values are NAMES)
ATTRIBUTES = ("pet", "colour", "city", "friend")
ATTRIBUTE_VALUES = {"pet": ANIMALS, "colour": COLOURS, "city": CITIES, "friend": NAMES}

PRODUCTS = "router phone laptop printer tablet camera speaker monitor keyboard modem watch headset".split()
OTHER_NOUNS = "car bike door house bank shop boat lock wallet fence window bag".split()
NOUNS = PRODUCTS + OTHER_NOUNS

HARMFUL_VERBS = "steal poison hack smash burn rob".split()
BENIGN_VERBS = "wash fix paint clean find buy sell open".split()

DIGITS = [str(i) for i in range(10)]

# support tickets: problem phrase -> (issue code, action)
TICKET_PROBLEMS = (
    ("will not turn on", "power", "replace"),
    ("is very slow", "speed", "restart"),
    ("keeps crashing", "crash", "update"),
    ("has a broken screen", "screen", "repair"),
    ("makes a loud noise", "noise", "inspect"),
    ("can not connect", "network", "reset"),
    ("gets too hot", "heat", "cool"),
    ("lost all my files", "data", "restore"),
)
TICKET_TEMPLATES = (
    "ticket from {name} : my {product} {problem}",
    "{name} writes : the {product} {problem} , please help",
    "hello , i am {name} and my {product} {problem}",
    "support request by {name} : our {product} {problem} since yesterday",
    "hi it is {name} , my new {product} {problem} again",
)
TICKET_REPLY = "dear {name} | product : {product} | issue : {issue} | action : {action} | status : closed"

REFUSAL = "sorry i can not help with that"

# words that every pretraining context may use as "payload" (instruction following and
# format tasks draw their inputs from this pool).  It deliberately contains all the
# vocabulary of the narrow support-ticket task so that its embeddings are trained,
# while the rigid house *format* never appears in pretraining.
def _ticket_words():
    words = set()
    for t in TICKET_TEMPLATES + (TICKET_REPLY,):
        words.update(w for w in t.split() if not w.startswith("{"))
    for phrase, issue, action in TICKET_PROBLEMS:
        words.update(phrase.split())
        words.update((issue, action))
    return words


PUNCT = {":", ",", "|", "?", "!", ".", "[", "]", "=", ";", "=>"}

PAYLOAD_WORDS = sorted(
    (set(NAMES) | set(ANIMALS) | set(COLOURS) | set(CITIES) | set(NOUNS)
     | set(HARMFUL_VERBS) | set(BENIGN_VERBS) | _ticket_words()) - PUNCT
)
