// The XML documents: what boto3 sends to complete an upload is read, hostile or malformed documents are
// refused, and what the endpoint writes is well-formed and escaped.

import { describe, expect, it } from "vitest";
import {
  completeResult,
  errorDocument,
  escapeXml,
  initiateResult,
  parseCompleteMultipartUpload,
} from "./xml.ts";

describe("CompleteMultipartUpload", () => {
  it("reads the document boto3 sends", () => {
    // Captured from boto3 1.43 (s3transfer) against a loopback server.
    const sent =
      '<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a26654e17b6a8195e868ca4e20f941d7"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>"31726bcaa2c5e01ed860041e2699258b"</ETag><PartNumber>2</PartNumber><ChecksumCRC32>UgEJrw==</ChecksumCRC32></Part></CompleteMultipartUpload>';
    expect(parseCompleteMultipartUpload(sent)).toEqual({
      ok: true,
      parts: [
        { partNumber: 1, etag: "a26654e17b6a8195e868ca4e20f941d7", checksums: {} },
        { partNumber: 2, etag: "31726bcaa2c5e01ed860041e2699258b", checksums: { crc32: "UgEJrw==" } },
      ],
    });
  });

  it("reads entities, prefixes, comments, CDATA and pretty-printing", () => {
    const doc = `<?xml version="1.0" encoding="UTF-8"?>
<!-- written by hand -->
<s3:CompleteMultipartUpload xmlns:s3='http://s3.amazonaws.com/doc/2006-03-01/'>
  <s3:Part>
    <s3:PartNumber> 7 </s3:PartNumber>
    <s3:ETag>&quot;ab&#99;&#x64;&quot;</s3:ETag>
  </s3:Part>
  <Part><PartNumber>8</PartNumber><ETag><![CDATA["ef"]]></ETag></Part>
</s3:CompleteMultipartUpload>
`;
    expect(parseCompleteMultipartUpload(doc)).toEqual({
      ok: true,
      parts: [
        { partNumber: 7, etag: "abcd", checksums: {} },
        { partNumber: 8, etag: "ef", checksums: {} },
      ],
    });
  });

  it.each([
    [
      "an entity definition (XXE)",
      '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CompleteMultipartUpload/>',
    ],
    [
      "billion laughs",
      '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&b;</ETag></Part></CompleteMultipartUpload>',
    ],
    [
      "an undefined entity",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&e;</ETag></Part></CompleteMultipartUpload>",
    ],
    [
      "a bare ampersand",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>a&b</ETag></Part></CompleteMultipartUpload>",
    ],
    ["a mismatched closing tag", "<CompleteMultipartUpload><Part></Parts></CompleteMultipartUpload>"],
    ["an unclosed root", "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part>"],
    ["content after the root", "<CompleteMultipartUpload/><x/>"],
    ["another root element", "<InitiateMultipartUploadResult/>"],
    ["no parts", "<CompleteMultipartUpload></CompleteMultipartUpload>"],
    [
      "a part without an ETag",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
    ],
    [
      "a part number that is no number",
      "<CompleteMultipartUpload><Part><PartNumber>1e3</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    ],
    [
      "a repeated PartNumber",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><PartNumber>2</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    ],
    [
      "an unknown element",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag><Size>3</Size></Part></CompleteMultipartUpload>",
    ],
    [
      "text beside the parts",
      "<CompleteMultipartUpload>hello<Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    ],
    [
      "a character reference to NUL",
      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&#0;</ETag></Part></CompleteMultipartUpload>",
    ],
    [
      "deep nesting",
      `<CompleteMultipartUpload>${"<Part>".repeat(40)}${"</Part>".repeat(40)}</CompleteMultipartUpload>`,
    ],
    ["not XML", '{"parts": []}'],
    ["nothing", ""],
  ])("refuses %s", (_name, doc) => {
    expect(parseCompleteMultipartUpload(doc)).toMatchObject({ ok: false });
  });
});

describe("documents written", () => {
  it("escapes text and carries S3's elements", () => {
    expect(escapeXml(`<a href="x">&'`)).toBe("&lt;a href=&quot;x&quot;&gt;&amp;&apos;");
    const doc = errorDocument(
      { code: "SignatureDoesNotMatch", extra: { StringToSign: "AWS4-HMAC-SHA256\n<x>" } },
      "/b/k&1",
      "REQ1",
    );
    expect(doc).toContain("<Code>SignatureDoesNotMatch</Code>");
    expect(doc).toContain("<StringToSign>AWS4-HMAC-SHA256\n&lt;x&gt;</StringToSign>");
    expect(doc).toContain("<Resource>/b/k&amp;1</Resource><RequestId>REQ1</RequestId>");
    expect(initiateResult("b", "k<", "u1")).toContain("<Key>k&lt;</Key><UploadId>u1</UploadId>");
    expect(completeResult("http://h/b/k", "b", "k", '"e-2"')).toContain("<ETag>&quot;e-2&quot;</ETag>");
  });
});
