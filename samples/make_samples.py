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
