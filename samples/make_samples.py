"""Writes samples/instances.jsonl: small hand-written instances of all three scenarios for the demo and tests.

Run from the repository root: python samples/make_samples.py (deterministic: the same file every time).
"""
import json
import random

rng = random.Random(7)
out = []
def shuffled(cands):
    cands = list(cands); rng.shuffle(cands); return cands
# ---- passage: query, passages with TREC-style grades 0-3
P = [
 ("p1", "how do vaccines train the immune system", [
  ("p1-a", "Vaccines contain weakened or inactivated parts of a pathogen. They trigger an immune response so the body makes antibodies and memory cells, which recognise the real pathogen later.", 3),
  ("p1-b", "After vaccination, memory B cells and T cells remain in the body for years and respond quickly when the same virus appears.", 2),
  ("p1-c", "The history of vaccination began with Edward Jenner's work on cowpox and smallpox in 1796.", 1),
  ("p1-d", "The immune system includes the skin, white blood cells, the lymph nodes and the spleen.", 1),
  ("p1-e", "Solar panels convert sunlight into electricity using photovoltaic cells made of silicon.", 0),
  ("p1-f", "A good sourdough starter needs flour, water and several days of regular feeding.", 0),
  ("p1-g", "The stock market closed higher on Tuesday as technology shares rallied.", 0),
  ("p1-h", "Train schedules change in December; check the timetable before you travel.", 0)]),
 ("p2", "what is the boiling point of water at high altitude", [
  ("p2-a", "At high altitude the air pressure is lower, so water boils at a lower temperature: about 95 C at 1,500 m and about 70 C on the summit of Mount Everest.", 3),
  ("p2-b", "Water boils at 100 degrees Celsius at sea level, where atmospheric pressure is one atmosphere.", 2),
  ("p2-c", "Cooking times for pasta and beans are longer in the mountains because water boils cooler there.", 2),
  ("p2-d", "Altitude sickness can occur above 2,500 metres; symptoms include headache and nausea.", 0),
  ("p2-e", "The melting point of ice is 0 degrees Celsius.", 1),
  ("p2-f", "Football clubs in the premier league play 38 matches per season.", 0),
  ("p2-g", "A kettle uses a heating element to warm water quickly.", 0),
  ("p2-h", "Mountain goats are agile climbers that live on steep rocky slopes.", 0)]),
 ("p3", "symptoms of vitamin d deficiency", [
  ("p3-a", "Vitamin D deficiency can cause bone pain, muscle weakness, fatigue and, in children, rickets with soft, bent bones.", 3),
  ("p3-b", "Low vitamin D levels are linked to frequent infections, low mood and slow wound healing.", 2),
  ("p3-c", "The skin makes vitamin D when exposed to sunlight; oily fish and eggs also contain it.", 1),
  ("p3-d", "Vitamin C is found in citrus fruit and helps the body absorb iron.", 0),
  ("p3-e", "The D-Day landings took place in Normandy on 6 June 1944.", 0),
  ("p3-f", "A blood test for 25-hydroxyvitamin D measures how much vitamin D is in the body.", 1),
  ("p3-g", "Electric cars need fewer maintenance visits than petrol cars.", 0),
  ("p3-h", "Learning to play the piano takes daily practice.", 0)]),
]
for qid, q, cands in P:
    c = shuffled(cands)
    out.append({"id": f"sample-passage-{qid}", "scenario": "passage", "dataset": "samples", "query": q,
                "candidates": [{"id": i, "text": t} for i, t, _ in c],
                "relevance": {i: g for i, _, g in c if g > 0}, "split": "test"})
# ---- recommendation: history -> next item (one relevant)
R = [
 ("u1", ["Toy Story (1995)", "Aladdin (1992)", "The Lion King (1994)", "Beauty and the Beast (1991)", "Pocahontas (1995)"],
  "Toy Story 2 (1999)", ["Saw (2004)", "The Godfather (1972)", "Schindler's List (1993)", "Alien (1979)", "Scream (1996)", "Taxi Driver (1976)", "Platoon (1986)"]),
 ("u2", ["The Terminator (1984)", "Aliens (1986)", "Predator (1987)", "RoboCop (1987)", "Die Hard (1988)"],
  "Terminator 2: Judgment Day (1991)", ["Sleepless in Seattle (1993)", "The Little Mermaid (1989)", "Babe (1995)", "Emma (1996)", "Sense and Sensibility (1995)", "Mary Poppins (1964)", "Bambi (1942)"]),
 ("u3", ["When Harry Met Sally (1989)", "Pretty Woman (1990)", "Sleepless in Seattle (1993)", "Notting Hill (1999)", "You've Got Mail (1998)"],
  "Four Weddings and a Funeral (1994)", ["Reservoir Dogs (1992)", "The Shining (1980)", "Halloween (1978)", "Full Metal Jacket (1987)", "Evil Dead II (1987)", "Scarface (1983)", "Predator (1987)"]),
]
for uid, hist, target, negs in R:
    c = shuffled([target] + negs)
    ids = {t: f"{uid}-i{k}" for k, t in enumerate(sorted(c))}
    out.append({"id": f"sample-rec-{uid}", "scenario": "recommendation", "dataset": "samples", "user_id": uid,
                "history": hist, "candidates": [{"id": ids[t], "text": t} for t in c],
                "relevance": {ids[target]: 1}, "split": "test"})
# ---- routing: query + preference; grades from utility a*quality - b*cost (normalised), shifted to >= 0
MODELS = [("gpt-4", "GPT-4: the strongest general model, very expensive", 0.95, 1.0),
          ("claude-instant", "Claude Instant: good at simple tasks, cheap", 0.70, 0.08),
          ("llama-2-70b", "Llama 2 70B chat: decent reasoning, medium price", 0.75, 0.09),
          ("mistral-7b", "Mistral 7B: small and very cheap, weak at hard reasoning", 0.55, 0.02),
          ("code-llama-34b", "Code Llama 34B: strong at programming, weak elsewhere", 0.50, 0.07),
          ("wizardlm-13b", "WizardLM 13B: small, cheap, uneven quality", 0.45, 0.03)]
QUERIES = [("r1", "Prove that the square root of 2 is irrational, step by step.", {"gpt-4": 1, "llama-2-70b": 1}),
           ("r2", "Write a Python function that returns the n-th Fibonacci number.", {"gpt-4": 1, "code-llama-34b": 1, "llama-2-70b": 1, "claude-instant": 1}),
           ("r3", "What is the capital of France?", {m[0]: 1 for m in MODELS})]
PREFS = {"performance": (1.0, 0.0), "balance": (0.5, 0.5), "cost": (0.2, 0.8)}
for rid, q, quality in QUERIES:
    for pref, (a, b) in PREFS.items():
        c = shuffled(MODELS)
        util = {m: a * quality.get(m, 0) - b * cost for m, _, _, cost in MODELS}
        lo = min(util.values())
        if max(util.values()) - lo < 1e-9:
            continue  # every model equally good: no ranking to learn or evaluate
        out.append({"id": f"sample-route-{rid}-{pref}", "scenario": "routing", "dataset": "samples", "query": q,
                    "preference": pref, "candidates": [{"id": m, "text": t} for m, t, _, _ in c],
                    "relevance": {m: round(u - lo, 4) for m, u in util.items() if u - lo > 0}, "split": "test"})
with open("samples/instances.jsonl", "w") as f:
    f.writelines(json.dumps(o) + "\n" for o in out)
print(len(out))

# =====================================================================================================================
# The same kinds of data in the public formats the adapters read (`iranker data ingest SOURCE samples/<folder>`).
import csv
from pathlib import Path

S = Path("samples")

# ---- recbole/ : RecBole atomic files (MovieLens style). 16 users, each with a favourite genre group.
GENRES = {
 "Animation Children's": [("Toy Story", 1995), ("Aladdin", 1992), ("The Lion King", 1994), ("Beauty and the Beast", 1991),
   ("Pocahontas", 1995), ("The Little Mermaid", 1989), ("Snow White and the Seven Dwarfs", 1937), ("Pinocchio", 1940),
   ("Bambi", 1942), ("Cinderella", 1950), ("Dumbo", 1941), ("Fantasia", 1940), ("The Jungle Book", 1967),
   ("101 Dalmatians", 1961), ("James and the Giant Peach", 1996), ("The Fox and the Hound", 1981),
   ("The Aristocats", 1970), ("Wallace & Gromit: A Close Shave", 1995), ("The Hunchback of Notre Dame", 1996), ("Babe", 1995)],
 "Action Sci-Fi": [("The Terminator", 1984), ("Terminator 2: Judgment Day", 1991), ("Aliens", 1986), ("Alien", 1979),
   ("Predator", 1987), ("RoboCop", 1987), ("Die Hard", 1988), ("Star Wars", 1977), ("The Empire Strikes Back", 1980),
   ("Return of the Jedi", 1983), ("Total Recall", 1990), ("Independence Day", 1996), ("Speed", 1994), ("True Lies", 1994),
   ("The Rock", 1996), ("Stargate", 1994), ("Twelve Monkeys", 1995), ("Blade Runner", 1982), ("Jurassic Park", 1993),
   ("The Fifth Element", 1997)],
 "Comedy Romance": [("When Harry Met Sally", 1989), ("Pretty Woman", 1990), ("Sleepless in Seattle", 1993),
   ("Four Weddings and a Funeral", 1994), ("While You Were Sleeping", 1995), ("Notting Hill", 1999), ("You've Got Mail", 1998),
   ("Jerry Maguire", 1996), ("The American President", 1995), ("Emma", 1996), ("Sense and Sensibility", 1995), ("Sabrina", 1995),
   ("French Kiss", 1995), ("Forget Paris", 1995), ("The Wedding Singer", 1998), ("Groundhog Day", 1993),
   ("My Best Friend's Wedding", 1997), ("Annie Hall", 1977), ("Roman Holiday", 1953), ("The Princess Bride", 1987)],
 "Horror Thriller": [("Scream", 1996), ("The Shining", 1980), ("Halloween", 1978), ("Psycho", 1960),
   ("The Silence of the Lambs", 1991), ("Se7en", 1995), ("Carrie", 1976), ("The Exorcist", 1973), ("Jaws", 1975),
   ("Evil Dead II", 1987), ("A Nightmare on Elm Street", 1984), ("The Thing", 1982), ("Misery", 1990), ("Rosemary's Baby", 1968),
   ("Vertigo", 1958), ("The Birds", 1963), ("Cape Fear", 1991), ("Candyman", 1992), ("Night of the Living Dead", 1968), ("The Fly", 1986)],
}
rng = random.Random(11)
items, by_genre = [], {}
for g, movies in GENRES.items():
    for title, year in movies:
        iid = str(len(items) + 1)
        items.append((iid, title, year, g))
        by_genre.setdefault(g, []).append(iid)
(S / "recbole").mkdir(exist_ok=True)
with open(S / "recbole" / "movies.item", "w") as f:
    f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
    f.writelines(f"{i}\t{t}\t{y}\t{g}\n" for i, t, y, g in items)
genres = list(GENRES)
with open(S / "recbole" / "movies.inter", "w") as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    for u in range(1, 17):
        fav = genres[(u - 1) % 4]
        liked = rng.sample(by_genre[fav], 17)
        others = rng.sample([i for g in genres if g != fav for i in by_genre[g]], 5)
        seq = liked[:16] + others
        rng.shuffle(seq)
        seq = seq[:20] + [liked[16]] + seq[20:]   # the 21st interaction (the target) is from the favourite genre
        for k, i in enumerate(seq):
            rating = rng.choice([4, 5]) if i in liked else rng.choice([1, 2, 3])
            f.write(f"{u}\t{i}\t{rating}\t{881250000 + u * 100000 + k * 3600}\n")

# ---- llmrank/ : LLMRank files (history -> next item, published random candidate lists). Video games.
GAMES = {
 "platform": ["Super Mario 64", "Super Mario Galaxy", "Donkey Kong Country", "Banjo-Kazooie", "Crash Bandicoot",
              "Spyro the Dragon", "Rayman Legends", "Sonic Mania", "Kirby's Epic Yarn", "Yoshi's Island"],
 "shooter": ["Halo: Combat Evolved", "Halo 3", "Call of Duty 4: Modern Warfare", "Battlefield 3", "Doom",
             "Quake III Arena", "BioShock", "Gears of War", "Half-Life 2", "Titanfall 2"],
 "sports": ["FIFA 18", "Madden NFL 18", "NBA 2K18", "Tony Hawk's Pro Skater 2", "Wii Sports", "Mario Kart 8",
            "Gran Turismo 5", "Forza Motorsport 7", "MLB The Show 17", "NHL 18"],
 "rpg": ["Final Fantasy VII", "Chrono Trigger", "The Elder Scrolls V: Skyrim", "Mass Effect 2", "Dragon Age: Origins",
         "Persona 5", "The Witcher 3: Wild Hunt", "Pokemon Red Version", "Kingdom Hearts", "Fallout: New Vegas"],
}
rng = random.Random(12)
games, by_kind = [], {}
for kind, titles in GAMES.items():
    for t in titles:
        by_kind.setdefault(kind, []).append(str(len(games)))
        games.append((str(len(games)), f"{t} - {kind}"))
(S / "llmrank").mkdir(exist_ok=True)
with open(S / "llmrank" / "Games-sample.item", "w") as f:
    f.write("item_id:token\ttitle:token_seq\n")
    f.writelines(f"{i}\t{t}\n" for i, t in games)
kinds = list(GAMES)
with open(S / "llmrank" / "Games-sample.test.inter", "w") as ft, open(S / "llmrank" / "Games-sample.random", "w") as fr:
    ft.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
    for u in range(12):
        fav = by_kind[kinds[u % 4]]
        picks = rng.sample(fav, 8)
        hist = picks[:6] + rng.sample([i for i, _ in games if i not in fav], 2)
        rng.shuffle(hist)
        ft.write(f"{u}\t{' '.join(hist)}\t{picks[6]}\n")
        fr.write(f"{u}\t{' '.join(rng.sample([i for i, _ in games], 30))}\n")

# ---- trec-dl/ : first-stage results with texts (JSON) + qrels; trec-dl-tsv/ : run + collection + queries + qrels
(S / "trec-dl").mkdir(exist_ok=True)
(S / "trec-dl-tsv").mkdir(exist_ok=True)
rng = random.Random(13)
entries, qrels, collection = [], [], {}
for n, (qid, q, cands) in enumerate(P):
    qnum = str(1000 + n)
    order = sorted(cands, key=lambda c: -(c[2] + rng.random() * 2.5))  # a noisy first stage
    hits = [{"content": t, "qid": int(qnum), "docid": str(7000 + 10 * n + r), "rank": r + 1,
             "score": round(20 - r * 1.3 - rng.random(), 4)} for r, (_, t, _) in enumerate(order)]
    docid = {t: h["docid"] for h, (_, t, _) in zip(hits, order)}
    qrels += [f"{qnum} 0 {docid[t]} {g}\n" for _, t, g in cands]
    collection.update({h["docid"]: h["content"] for h in hits})
    entries.append({"query": q, "hits": hits})
(S / "trec-dl" / "sample_bm25_top8.json").write_text(json.dumps(entries, indent=1) + "\n")
(S / "trec-dl" / "qrels.sample.txt").write_text("".join(qrels))
(S / "trec-dl-tsv" / "qrels.sample.txt").write_text("".join(qrels))
(S / "trec-dl-tsv" / "queries.tsv").write_text("".join(f"{h['hits'][0]['qid']}\t{h['query']}\n" for h in entries))
(S / "trec-dl-tsv" / "collection.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in sorted(collection.items())))
(S / "trec-dl-tsv" / "bm25.run").write_text("".join(
    f"{h['qid']} Q0 {h['docid']} {h['rank']} {h['score']} sample-bm25\n" for e in entries for h in e["hits"]))

# ---- routerbench/ : per query, 0/1 quality and USD cost of each of the 11 RouterBench models
RB_MODELS = [  # (model, strength 0-1, USD per 1k prompt characters, coder)
 ("WizardLM/WizardLM-13B-V1.2", 0.45, 0.00008, False), ("claude-instant-v1", 0.6, 0.0003, False),
 ("claude-v1", 0.75, 0.003, False), ("claude-v2", 0.8, 0.003, False), ("gpt-3.5-turbo-1106", 0.7, 0.0003, False),
 ("gpt-4-1106-preview", 0.95, 0.003, False), ("meta/code-llama-instruct-34b-chat", 0.4, 0.0002, True),
 ("meta/llama-2-70b-chat", 0.6, 0.0002, False), ("mistralai/mistral-7b-chat", 0.4, 0.00005, False),
 ("mistralai/mixtral-8x7b-chat", 0.7, 0.0001, False), ("zero-one-ai/Yi-34B-Chat", 0.65, 0.0002, False)]
RB_QUERIES = {
 "arc-challenge": ["Which gas do plants take in for photosynthesis?\nA) oxygen\nB) carbon dioxide\nC) nitrogen\nD) helium",
                   "What causes the seasons on Earth?\nA) distance to the Sun\nB) the tilt of Earth's axis\nC) the Moon\nD) clouds",
                   "Which metal is liquid at room temperature?\nA) iron\nB) mercury\nC) copper\nD) gold",
                   "A ball is thrown upward. At the top of its path its velocity is\nA) maximal\nB) zero\nC) negative\nD) doubled",
                   "Which organ pumps blood through the body?\nA) lungs\nB) liver\nC) heart\nD) kidney",
                   "Sound travels fastest through\nA) air\nB) water\nC) steel\nD) vacuum"],
 "mbpp": ["Write a Python function to reverse a string.", "Write a function that returns the n-th Fibonacci number.",
          "Write a function to check whether a number is prime.", "Write a function to merge two sorted lists.",
          "Write a function to count the vowels in a string.", "Write a function to flatten a nested list."],
 "winogrande": ["The trophy does not fit in the suitcase because _ is too big.\nA) trophy\nB) suitcase",
                "Sarah lent Maria money because _ was short of cash.\nA) Sarah\nB) Maria",
                "The ice melted in the sun because _ was warm.\nA) ice\nB) sun",
                "Tom beat Jim at chess because _ practised more.\nA) Tom\nB) Jim"],
}
rng = random.Random(14)
header = ["", "sample_id", "prompt", "eval_name"] + [m for m, *_ in RB_MODELS] + \
         [f"{m}|model_response" for m, *_ in RB_MODELS] + [f"{m}|total_cost" for m, *_ in RB_MODELS] + \
         ["oracle_model_to_route_to"]
(S / "routerbench").mkdir(exist_ok=True)
rows = {"train": [], "test": []}
row_id = 0
for task, qs in RB_QUERIES.items():
    for k, q in enumerate(qs):
        split = "test" if k % 3 == 2 else "train"
        prompt = repr([q + "\nAnswer:"])
        hard = rng.random()
        qual = {m: int(rng.random() < (s + (0.35 if coder and task == "mbpp" else 0)) * (1.2 - hard * 0.5))
                for m, s, _, coder in RB_MODELS}
        cost = {m: round(price * len(q) / 1000 * (1 + rng.random()), 7) for m, _, price, _ in RB_MODELS}
        best = min((m for m in qual if qual[m]), key=lambda m: cost[m], default="gpt-4-1106-preview")
        rows[split].append([str(row_id), f"{task}.{split}.{k}", prompt, task] + [str(qual[m]) for m, *_ in RB_MODELS]
                           + ["(response)" for _ in RB_MODELS] + [str(cost[m]) for m, *_ in RB_MODELS] + [best])
        row_id += 1
for split, rs in rows.items():
    with open(S / "routerbench" / f"sample_{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rs)
print("public-format samples written under samples/")
