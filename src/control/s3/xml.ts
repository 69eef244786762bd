// The XML documents of the upload endpoint: S3's Error, InitiateMultipartUploadResult and
// CompleteMultipartUploadResult written out, and the client's CompleteMultipartUpload read by a small strict
// parser (XML 1.0 elements, attributes, text and the predefined and numeric entities). A DOCTYPE, and so
// any entity definition, is refused outright: the body comes from a stranger.

import type { ChecksumAlgorithm } from "./checksums.ts";
import { S3_ERRORS, type S3Failure } from "./errors.ts";

export const S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/";
const PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n';

/** Escapes text for element content and attribute values (XML 1.0 §2.4). */
export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) =>
    c === "<" ? "&lt;" : c === ">" ? "&gt;" : c === "&" ? "&amp;" : c === '"' ? "&quot;" : "&apos;",
  );
}

function element(name: string, text: string): string {
  return `<${name}>${escapeXml(text)}</${name}>`;
}

export function errorDocument(failure: S3Failure, resource: string, requestId: string): string {
  const message = failure.message ?? S3_ERRORS[failure.code].message;
  const extra = Object.entries(failure.extra ?? {})
    .map(([name, value]) => element(name, value))
    .join("");
  return `${PROLOG}<Error>${element("Code", failure.code)}${element("Message", message)}${extra}${element("Resource", resource)}${element("RequestId", requestId)}</Error>`;
}

export function initiateResult(bucket: string, key: string, uploadId: string): string {
  return `${PROLOG}<InitiateMultipartUploadResult xmlns="${S3_NAMESPACE}">${element("Bucket", bucket)}${element("Key", key)}${element("UploadId", uploadId)}</InitiateMultipartUploadResult>`;
}

export function completeResult(location: string, bucket: string, key: string, etag: string): string {
  return `${PROLOG}<CompleteMultipartUploadResult xmlns="${S3_NAMESPACE}">${element("Location", location)}${element("Bucket", bucket)}${element("Key", key)}${element("ETag", etag)}</CompleteMultipartUploadResult>`;
}

interface XmlElement {
  name: string;
  children: XmlElement[];
  text: string;
}

class XmlSyntaxError extends Error {}

const NAME = /^[A-Za-z_][A-Za-z0-9._:-]*/;

function decodeEntities(raw: string): string {
  return raw.replace(/&([^;&]*);|&/g, (whole, ref: string | undefined) => {
    if (ref === undefined) throw new XmlSyntaxError("a bare '&' in text");
    switch (ref) {
      case "lt":
        return "<";
      case "gt":
        return ">";
      case "amp":
        return "&";
      case "quot":
        return '"';
      case "apos":
        return "'";
    }
    const m = /^#(?:x([0-9A-Fa-f]{1,6})|([0-9]{1,7}))$/.exec(ref);
    if (!m) throw new XmlSyntaxError(`unknown entity ${whole}`);
    const code = m[1] !== undefined ? Number.parseInt(m[1], 16) : Number(m[2]);
    if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
      throw new XmlSyntaxError(`invalid character reference ${whole}`);
    }
    return String.fromCodePoint(code);
  });
}

/** Parses one document into its root element; throws XmlSyntaxError on anything not well-formed. */
function parseDocument(text: string): XmlElement {
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /[ \t\r\n]/.test(text[i]!)) i++;
  };
  const skipMisc = () => {
    for (;;) {
      skipSpace();
      if (text.startsWith("<!--", i)) {
        const end = text.indexOf("-->", i + 4);
        if (end < 0) throw new XmlSyntaxError("an unterminated comment");
        i = end + 3;
      } else if (text.startsWith("<?", i) && !text.startsWith("<?xml", i)) {
        const end = text.indexOf("?>", i + 2);
        if (end < 0) throw new XmlSyntaxError("an unterminated processing instruction");
        i = end + 2;
      } else return;
    }
  };
  if (text.charCodeAt(0) === 0xfeff) i = 1;
  if (text.startsWith("<?xml", i)) {
    const end = text.indexOf("?>", i);
    if (end < 0) throw new XmlSyntaxError("an unterminated XML declaration");
    i = end + 2;
  }
  skipMisc();
  if (text.startsWith("<!", i)) throw new XmlSyntaxError("DOCTYPE declarations are not accepted");

  const parseElement = (depth: number): XmlElement => {
    if (depth > 16) throw new XmlSyntaxError("elements nested too deeply");
    if (text[i] !== "<") throw new XmlSyntaxError(`expected '<' at offset ${i}`);
    i++;
    const nameMatch = NAME.exec(text.slice(i, i + 256));
    if (!nameMatch) throw new XmlSyntaxError(`expected an element name at offset ${i}`);
    const name = nameMatch[0];
    i += name.length;
    // Attributes (xmlns and the like) are read for well-formedness and otherwise ignored.
    for (;;) {
      const before = i;
      skipSpace();
      if (text.startsWith("/>", i)) {
        i += 2;
        return { name, children: [], text: "" };
      }
      if (text[i] === ">") {
        i++;
        break;
      }
      if (i === before) throw new XmlSyntaxError(`expected whitespace before an attribute at offset ${i}`);
      const attr = NAME.exec(text.slice(i, i + 256));
      if (!attr) throw new XmlSyntaxError(`expected an attribute at offset ${i}`);
      i += attr[0].length;
      skipSpace();
      if (text[i] !== "=") throw new XmlSyntaxError(`expected '=' at offset ${i}`);
      i++;
      skipSpace();
      const quote = text[i];
      if (quote !== '"' && quote !== "'") throw new XmlSyntaxError(`expected a quoted value at offset ${i}`);
      const end = text.indexOf(quote, i + 1);
      if (end < 0 || text.slice(i + 1, end).includes("<"))
        throw new XmlSyntaxError("a malformed attribute value");
      decodeEntities(text.slice(i + 1, end));
      i = end + 1;
    }
    const children: XmlElement[] = [];
    let content = "";
    for (;;) {
      if (i >= text.length) throw new XmlSyntaxError(`element <${name}> is not closed`);
      if (text.startsWith("</", i)) {
        i += 2;
        if (!text.startsWith(name, i)) throw new XmlSyntaxError(`mismatched closing tag for <${name}>`);
        i += name.length;
        skipSpace();
        if (text[i] !== ">") throw new XmlSyntaxError(`malformed closing tag for <${name}>`);
        i++;
        return { name, children, text: content };
      }
      if (text.startsWith("<!--", i)) {
        const end = text.indexOf("-->", i + 4);
        if (end < 0) throw new XmlSyntaxError("an unterminated comment");
        i = end + 3;
        continue;
      }
      if (text.startsWith("<![CDATA[", i)) {
        const end = text.indexOf("]]>", i + 9);
        if (end < 0) throw new XmlSyntaxError("an unterminated CDATA section");
        content += text.slice(i + 9, end);
        i = end + 3;
        continue;
      }
      if (text.startsWith("<!", i) || text.startsWith("<?", i)) {
        throw new XmlSyntaxError(`unexpected markup at offset ${i}`);
      }
      if (text[i] === "<") {
        children.push(parseElement(depth + 1));
        continue;
      }
      const next = text.indexOf("<", i);
      const raw = text.slice(i, next < 0 ? text.length : next);
      content += decodeEntities(raw);
      i += raw.length;
    }
  };

  const root = parseElement(0);
  skipMisc();
  if (i !== text.length) throw new XmlSyntaxError("content after the root element");
  return root;
}

/** The local part of a possibly prefixed name (`s3:Part` → `Part`). */
const local = (name: string) => name.slice(name.indexOf(":") + 1);

export interface CompletedPart {
  partNumber: number;
  /** The ETag as the client sent it, quotes removed. */
  etag: string;
  /** Base64 digests the client lists for the part. */
  checksums: Partial<Record<ChecksumAlgorithm, string>>;
}

const PART_CHECKSUMS: Record<string, ChecksumAlgorithm> = {
  ChecksumCRC32: "crc32",
  ChecksumCRC32C: "crc32c",
  ChecksumSHA1: "sha1",
  ChecksumSHA256: "sha256",
};

export type CompleteRequest = { ok: true; parts: CompletedPart[] } | { ok: false; message: string };

/** Reads `<CompleteMultipartUpload><Part><PartNumber>…</PartNumber><ETag>…</ETag></Part>…`. */
export function parseCompleteMultipartUpload(text: string): CompleteRequest {
  let root: XmlElement;
  try {
    root = parseDocument(text);
  } catch (err) {
    if (err instanceof XmlSyntaxError)
      return { ok: false, message: `The XML is not well-formed: ${err.message}.` };
    throw err;
  }
  if (local(root.name) !== "CompleteMultipartUpload") {
    return { ok: false, message: `The root element must be CompleteMultipartUpload, not ${root.name}.` };
  }
  if (root.text.trim() !== "")
    return { ok: false, message: "CompleteMultipartUpload holds only Part elements." };
  const parts: CompletedPart[] = [];
  for (const child of root.children) {
    if (local(child.name) !== "Part") return { ok: false, message: `Unexpected element ${child.name}.` };
    let partNumber: number | null = null;
    let etag: string | null = null;
    const checksums: CompletedPart["checksums"] = {};
    for (const field of child.children) {
      const name = local(field.name);
      if (field.children.length > 0) return { ok: false, message: `${name} must hold text only.` };
      const value = field.text.trim();
      if (name === "PartNumber") {
        if (partNumber !== null || !/^\d{1,5}$/.test(value)) {
          return { ok: false, message: `PartNumber '${value}' is not a part number.` };
        }
        partNumber = Number(value);
      } else if (name === "ETag") {
        if (etag !== null) return { ok: false, message: "A Part has more than one ETag." };
        etag = value.replace(/^"(.*)"$/, "$1");
      } else if (name in PART_CHECKSUMS) {
        checksums[PART_CHECKSUMS[name]!] = value;
      } else {
        return { ok: false, message: `Unexpected element ${name} in Part.` };
      }
    }
    if (partNumber === null || etag === null) {
      return { ok: false, message: "Every Part needs a PartNumber and an ETag." };
    }
    parts.push({ partNumber, etag, checksums });
  }
  if (parts.length === 0) return { ok: false, message: "CompleteMultipartUpload lists no Part." };
  return { ok: true, parts };
}
