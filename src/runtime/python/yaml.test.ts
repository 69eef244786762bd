// config.yaml is read twice: by the control plane and the JavaScript runtime with the `yaml` package, and
// by the Python host with its own parser of the subset Meridian accepts (_meridian_host/yaml_subset.py).
// These tests hold the two together: generated documents (values of every shape, written by `yaml` in
// every style it has) and a corpus of hand-written ones must be accepted by both or refused by both,
// and read to the same value; and the keys both runtimes validate must fail alike. Debian's python3.

import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { parseModelConfig, parseYamlSubset } from "../../core/model-config.ts";
import { EXAMPLES } from "../testing.ts";
import { DEBIAN_PYTHON } from "./testing.ts";

const HOST_DIR = import.meta.dirname;

const READER = `
import sys, json, math
sys.path.insert(0, ${JSON.stringify(HOST_DIR)})
from _meridian_host.yaml_subset import parse, YamlError
from _meridian_host.package import package_from, PackageError

def clean(v):
    # As JSON.stringify writes what the yaml package reads: no Infinity or NaN.
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v

mode, root = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    text = json.loads(line)
    try:
        value = parse(text)
        if mode == "config":
            package_from(root, value)
            out = {"ok": True}
        else:
            out = {"ok": True, "value": clean(value)}
    except YamlError as err:
        out = {"ok": False, "key": "(document)", "message": str(err)}
    except PackageError as err:
        out = {"ok": False, "key": err.key, "message": str(err)}
    except Exception as err:
        out = {"ok": False, "crash": repr(err)}
    print(json.dumps(out), flush=True)
`;

const root = mkdtempSync(path.join(tmpdir(), "meridian-yaml-"));
mkdirSync(path.join(root, "model"));
writeFileSync(path.join(root, "model", "model.py"), "class Model:\n    pass\n");

afterAll(() => rmSync(root, { recursive: true, force: true }));

type PyAnswer = { ok: boolean; value?: unknown; key?: string; message?: string; crash?: string };

/** Reads every text with the Python parser in one process (one line of JSON in and out per text). */
function python(texts: string[], mode: "value" | "config" = "value"): PyAnswer[] {
  const result = spawnSync(DEBIAN_PYTHON, ["-B", "-c", READER, mode, root], {
    input: `${texts.map((t) => JSON.stringify(t)).join("\n")}\n`,
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  if (result.status !== 0) throw new Error(`the reader failed: ${result.stderr}`);
  const answers = result.stdout
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as PyAnswer);
  expect(answers).toHaveLength(texts.length);
  return answers;
}

/** What the TypeScript side reads, as JSON (so -0 is 0 and Infinity null, as the Python side prints). */
function typescript(text: string): { ok: boolean; value?: unknown } {
  const parsed = parseYamlSubset(text);
  return parsed.ok ? { ok: true, value: JSON.parse(JSON.stringify(parsed.value ?? null)) } : { ok: false };
}

function agree(texts: string[], context: string): void {
  const answers = python(texts);
  texts.forEach((text, i) => {
    const py = answers[i]!;
    const ts = typescript(text);
    const where = `${context}: ${JSON.stringify(text)}\npython: ${JSON.stringify(py)}`;
    expect(py.crash, where).toBeUndefined();
    expect(py.ok, where).toBe(ts.ok);
    if (ts.ok) expect(py.value, where).toEqual(ts.value);
  });
}

const CHARS = [..."ab :#-'\"\\\n\t{}[],&*!|>%@`?~é019.xZ_/"];
const SPECIAL = [
  "",
  " ",
  "null",
  "Null",
  "~",
  "true",
  "False",
  "TRUE",
  "yes",
  "no",
  "on",
  "1",
  "-1",
  "+1",
  "-0",
  "007",
  "0x1F",
  "0o17",
  "1.5",
  ".5",
  "5.",
  "1e3",
  "-1.5E-3",
  ".inf",
  "-.Inf",
  ".NaN",
  "1_000",
  "- a",
  "-",
  "a: b",
  "#c",
  "a #c",
  "a#c",
  "'",
  '"',
  "\\",
  "é",
  "line\nbreak",
  "trailing ",
  " leading",
  "tab\there",
  "\n",
  "a\n\nb",
  "a\n\n\n",
  "---",
  "...",
  "--- x",
  "%x",
  "@x",
  "`x",
  "[x]",
  "{x}",
  "*x",
  "&x",
  "!x",
  "|",
  ">",
  "?",
  "? x",
  ": x",
  ",x",
  "x,",
  "x:",
  "x::y",
  "http://a.b/c?d=e#f",
  "\u2028",
  "\x07bell",
  "\r",
  "a\r\nb",
];

const scalar = fc.oneof(
  fc.string({ unit: fc.constantFrom(...CHARS), maxLength: 14 }),
  fc.constantFrom(...SPECIAL),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.boolean(),
  fc.constant(null),
);
const key = fc.oneof(
  fc.string({ unit: fc.constantFrom(...CHARS), maxLength: 10 }),
  fc.constantFrom(...SPECIAL),
);
const { node } = fc.letrec((tie) => ({
  node: fc.oneof({ depthSize: "small", withCrossShrink: true }, scalar, tie("array"), tie("object")),
  array: fc.array(tie("node"), { maxLength: 4 }),
  object: fc.dictionary(key, tie("node"), { maxKeys: 4 }),
}));
const documentValue = fc.oneof(fc.dictionary(key, node, { minKeys: 1, maxKeys: 6 }), node);
const style = fc.record({
  collectionStyle: fc.constantFrom("any", "block", "flow"),
  defaultStringType: fc.constantFrom(
    "PLAIN",
    "QUOTE_DOUBLE",
    "QUOTE_SINGLE",
    "BLOCK_LITERAL",
    "BLOCK_FOLDED",
  ),
  defaultKeyType: fc.constantFrom(null, "PLAIN", "QUOTE_DOUBLE", "QUOTE_SINGLE"),
  lineWidth: fc.constantFrom(0, 12, 20, 80),
  minContentWidth: fc.constantFrom(0, 4, 20),
  indent: fc.constantFrom(2, 3, 4),
  indentSeq: fc.boolean(),
  doubleQuotedAsJSON: fc.boolean(),
  flowCollectionPadding: fc.boolean(),
  nullStr: fc.constantFrom("null", "~", ""),
  trueStr: fc.constantFrom("true", "True"),
  directives: fc.constant(false),
}) as fc.Arbitrary<Parameters<typeof stringify>[2] & object>;

describe("the Python host's YAML reader and the yaml package", () => {
  it("read generated documents, written in every style the yaml package has, to the same value", () => {
    const seed = Date.now();
    const samples = fc.sample(fc.tuple(documentValue, style), { numRuns: 1000, seed });
    const texts = samples.map(([value, options]) => stringify(value, options));
    agree(texts, `seed ${seed}`);
  });

  it("agree on a corpus of hand-written documents: comments, block scalars, folding, flow, markers", () => {
    agree(
      [
        "a: 1 # comment\n# a full-line comment\nb: [1, 2] # another\n",
        "a: |\n  keep\n  lines\n\nb: >-\n  folded\n  text\n\n  para\n",
        "a: |+\n  x\n\n\nb: 1\n",
        "a: |-\n  x\n\n",
        "a: >\n  one\n    more\n  two\n\n\n  three\n",
        "a: >2\n   indented by the indicator\n",
        "a: |\n\n  after an empty line\n",
        "a: plain\n  continued\n\n  after a blank\nb: 2\n",
        "- a\n- - b\n  - c\n- d: 1\n  e: 2\n",
        "k:\n- 1\n- 2\nj: 3\n",
        "a:\n  - x\n  -\n  - - y\n",
        "a: 'it''s'\nb: \"\\u00e9\\t\\x41\\U0001F600\\/\"\n",
        'a: "multi\n  line\n\n  quoted"\nb: "joined\\\n  here"\n',
        "a: 'single\n\n  folded'\n",
        "a: {b: [1, {c: d}], e: f, g}\n",
        "a: [\n  1,\n  2, # c\n]\n",
        "a: [b: 1, c]\n",
        "---\na: 1\n...\n",
        "--- # a comment\na: 1\n",
        "--- {a: 1}\n",
        "\ufeffa: 1\r\nb: 2\r\n",
        "a:\n  b:\n    c: 1\n  d: 2\n",
        "empty:\nnull_value: null\ntilde: ~\n",
        "'quoted key': 1\n\"dq key\": 2\n",
        "a: 1\n  # an indented comment\nb: 2\n",
        "a:    spaced out   \n",
        "a: x:y\nb: http://h/p#f\n",
        "a: 'x' # c\n",
        "list: [a, b, ]\n",
        "a: -x\nb: -1\nc: - x\n",
        "a: 0x1F\nb: 0o17\nc: 1e3\nd: .inf\ne: -.inf\nf: .nan\ng: 1_000\nh: 012\ni: +5\n",
        "1: one\ntrue: two\nnull: three\n1.0: four\n",
        "",
        "# only a comment\n",
        "plain scalar document\n",
        "[1, 2]\n",
        // Each of these is outside the subset or not YAML: both refuse.
        "a: !!str 1\n",
        "a: !custom x\n",
        "a: &x 1\nb: *x\n",
        "? a\n: 1\n",
        "? [a]\n: 1\n",
        "[a]: 1\n",
        "{a: 1}: 2\n",
        "%YAML 1.2\n---\na: 1\n",
        "a: 1\n---\nb: 2\n",
        "a: 1\na: 2\n",
        "\ta: 1\n",
        "a:\n\t- 1\n",
        "a: b: c\n",
        "a: - b\n",
        "a: [1, 2\n",
        "a: 'unclosed\n",
        'a: "bad escape \\q"\n',
        "a:\n  - b\n  c: d\n",
        "a:\n  b: 1\n   c: 2\n",
        "a: 1\n b: 2\n",
        "- a\nb: 1\n",
        "a: @x\n",
        "a: `x\n",
        "a: |\n  x\n y\n",
        "--- a: 1\n",
      ],
      "corpus",
    );
  });

  it("never read a document to different values, however it is mangled (both may refuse it)", () => {
    const seed = Date.now();
    const bases = [
      readFileSync(path.join(EXAMPLES, "hello-py", "config.yaml"), "utf8"),
      "a: 1\nb: [x, y]\nc:\n  - d: 'q'\n    e: \"r\"\n  - f\ng: |\n  lit\n  eral\nh: >-\n  fold\n  ed\n",
      stringify({ a: { b: ["c", { d: "e f" }], g: "h: i" }, j: [1, 2.5, null, true] }),
    ];
    const edit = fc.tuple(
      fc.nat(),
      fc.constantFrom(
        "",
        " ",
        "\n",
        ":",
        "-",
        "#",
        "'",
        '"',
        "\t",
        ",",
        "[",
        "]",
        "{",
        "}",
        "|",
        ">",
        "\\",
        ": ",
        "- ",
        "\n  ",
      ),
      fc.boolean(),
    );
    const samples = fc.sample(
      fc.tuple(fc.constantFrom(...bases), fc.array(edit, { minLength: 1, maxLength: 3 })),
      {
        numRuns: 2000,
        seed,
      },
    );
    const texts = samples.map(([base, edits]) =>
      edits.reduce((text, [at, insert, replace]) => {
        const p = at % (text.length + 1);
        return text.slice(0, p) + insert + text.slice(replace ? p + 1 : p);
      }, base),
    );
    const answers = python(texts);
    let both = 0;
    texts.forEach((text, i) => {
      const py = answers[i]!;
      const ts = typescript(text);
      const where = `seed ${seed}: ${JSON.stringify(text)}\npython: ${JSON.stringify(py)}`;
      expect(py.crash, where).toBeUndefined();
      if (ts.ok && py.ok) {
        both++;
        expect(py.value, where).toEqual(ts.value);
      }
    });
    // Most mangled documents are still YAML: the comparison above is not vacuous.
    expect(both).toBeGreaterThan(texts.length / 5);
  });

  it("reads every example's config.yaml as the yaml package does", () => {
    const examples = [
      "hello-js",
      "stream-js",
      "custom-python",
      "hello-py",
      "stream-py",
      "openai-js",
      "openai-py",
    ];
    agree(
      examples.map((e) => readFileSync(path.join(EXAMPLES, e, "config.yaml"), "utf8")),
      "examples",
    );
  });
});

describe("the keys both runtimes validate", () => {
  it("are refused alike, naming the same key", () => {
    const configs = [
      "",
      "model_name: 12\n",
      "model_name: ''\n",
      "runtime: fast\n",
      "runtime:\n  predict_concurrency: 0\n",
      "runtime:\n  predict_concurrency: 1.5\n",
      "runtime:\n  predict_concurrency: 4.0\n",
      "runtime:\n  predict_concurrency: 2e0\n",
      "runtime:\n  predict_concurrency: true\n",
      "runtime:\n  predict_concurrency: '2'\n",
      "environment_variables: [A]\n",
      "environment_variables:\n  1A: x\n",
      "environment_variables:\n  MERIDIAN_X: x\n",
      "environment_variables:\n  A:\n    b: 1\n",
      "environment_variables:\n  A: 1.0\n  B: true\n  C: 7\n",
      "model_metadata: [1]\n",
      "model_module_dir: ../up\n",
      "model_module_dir: /abs\n",
      "model_module_dir: a/../../b\n",
      "model_module_dir: ./model/\n",
      "model_class_filename: model.js\n",
      "model_class_filename: sub/model.py\n",
      "model_class_name: 1Model\n",
      "model_class_name: Mod-el\n",
      "bundled_packages_dir: ../../etc\n",
      "data_dir: ''\n",
      "external_package_dirs: shared\n",
      "external_package_dirs: [shared, '']\n",
      "external_package_dirs: [shared, ../outside]\n",
      "secrets: [a]\n",
      "secrets:\n  ok_name: null\n  bad/name: null\n",
      "secrets:\n  token: 5\n",
      "secrets:\n  token: placeholder\n",
      "python_version: py311\n",
      "python_version: 3.11\n",
      "python_version: python3\n",
    ];
    const answers = python(configs, "config");
    configs.forEach((text, i) => {
      const py = answers[i]!;
      const ts = parseModelConfig(text);
      const where = `${JSON.stringify(text)}\npython: ${JSON.stringify(py)}\ntypescript: ${JSON.stringify(ts)}`;
      expect(py.crash, where).toBeUndefined();
      expect(py.ok, where).toBe(ts.ok);
      if (!ts.ok) expect(py.key, where).toBe(ts.key);
    });
  });
});
