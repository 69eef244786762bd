// The S3 error codes the upload endpoint answers with, their HTTP status and S3's own message, as Amazon S3
// lists them ("Error responses", S3 API reference). S3 clients branch on these codes, so they are S3's and
// not Meridian's JSON catalog; docs/errors.md lists them in a section of their own.

export const S3_ERRORS = {
  AccessDenied: { status: 403, message: "Access Denied" },
  AuthorizationHeaderMalformed: { status: 400, message: "The authorization header is malformed." },
  BadDigest: {
    status: 400,
    message: "The Content-MD5 or checksum value that you specified did not match what the server received.",
  },
  EntityTooLarge: { status: 400, message: "Your proposed upload exceeds the maximum allowed size." },
  EntityTooSmall: {
    status: 400,
    message: "Your proposed upload is smaller than the minimum allowed object size.",
  },
  // S3 itself answers these two with 400; Meridian refuses every credential it will not honour with 403,
  // as the upload contract says (issue 11), so a client can treat "not allowed" one way. boto3 reads the code.
  ExpiredToken: { status: 403, message: "The provided token has expired." },
  IncompleteBody: {
    status: 400,
    message: "You did not provide the number of bytes specified by the Content-Length HTTP header.",
  },
  InternalError: { status: 500, message: "We encountered an internal error. Please try again." },
  InvalidAccessKeyId: {
    status: 403,
    message: "The AWS Access Key Id you provided does not exist in our records.",
  },
  InvalidArgument: { status: 400, message: "Invalid Argument" },
  InvalidDigest: { status: 400, message: "The Content-MD5 you specified is not valid." },
  InvalidPart: {
    status: 400,
    message:
      "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
  },
  InvalidPartOrder: {
    status: 400,
    message: "The list of parts was not in ascending order. Parts must be ordered by part number.",
  },
  InvalidRequest: { status: 400, message: "Invalid Request" },
  InvalidToken: { status: 403, message: "The provided token is malformed or otherwise invalid." },
  InvalidURI: { status: 400, message: "Couldn't parse the specified URI." },
  MalformedXML: {
    status: 400,
    message: "The XML you provided was not well-formed or did not validate against our published schema.",
  },
  MissingContentLength: { status: 411, message: "You must provide the Content-Length HTTP header." },
  NoSuchUpload: {
    status: 404,
    message:
      "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
  },
  NotImplemented: {
    status: 501,
    message: "A header you provided implies functionality that is not implemented.",
  },
  OperationAborted: {
    status: 409,
    message: "A conflicting conditional operation is currently in progress against this resource. Try again.",
  },
  RequestTimeTooSkewed: {
    status: 403,
    message: "The difference between the request time and the current time is too large.",
  },
  SignatureDoesNotMatch: {
    status: 403,
    message:
      "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
  },
  XAmzContentSHA256Mismatch: {
    status: 400,
    message: "The provided 'x-amz-content-sha256' header does not match what was computed.",
  },
} as const satisfies Record<string, { status: number; message: string }>;

export type S3ErrorCode = keyof typeof S3_ERRORS;

/** A refusal: S3's code, an optional more precise message, and extra elements of the Error document. */
export interface S3Failure {
  code: S3ErrorCode;
  message?: string;
  extra?: Record<string, string>;
}

export function s3Failure(code: S3ErrorCode, message?: string, extra?: Record<string, string>): S3Failure {
  return { code, ...(message === undefined ? {} : { message }), ...(extra === undefined ? {} : { extra }) };
}

/** Carries an S3Failure through a stream pipeline, where only an Error can travel. */
export class S3Refusal extends Error {
  readonly failure: S3Failure;
  constructor(failure: S3Failure) {
    super(failure.message ?? S3_ERRORS[failure.code].message);
    this.name = "S3Refusal";
    this.failure = failure;
  }
}
