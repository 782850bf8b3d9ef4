/** Machine-readable error codes used across xquant packages. */
export type XqErrorCode =
  | 'E_BITS'
  | 'E_GROUP_SIZE'
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_NON_FINITE'
  | 'E_CONFIG'
  | 'E_RESIDUAL'
  | 'E_SHARE_BITS_MISMATCH'
  | 'E_PLAN'
  | 'E_FORMAT'
  | 'E_BACKEND_UNAVAILABLE'
  | 'E_KERNEL_MISSING'
  | 'E_STATE'
  | 'E_CAPACITY'
  | 'E_STRATEGY_UNKNOWN'
  | 'E_STRATEGY_VERSION'
  | 'E_IO'
  | 'E_INVARIANT';

const MARKER = Symbol.for('xquant.error');

/**
 * Base class of every error thrown by xquant packages. `code` is stable and machine-readable;
 * the message says what was expected and what was received.
 * Use {@link XqError.isInstance} rather than `instanceof` when several copies of the package may be loaded.
 */
export class XqError extends Error {
  /** Stable machine-readable code. */
  readonly code: XqErrorCode;
  /** Brand recognised by {@link XqError.isInstance} across package copies. */
  readonly [MARKER] = true;
  constructor(code: XqErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'XqError';
  }
  /** True for any xquant error, even one thrown by another copy of this package. */
  static isInstance(e: unknown): e is XqError {
    return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[MARKER] === true;
  }
}

/** Invalid configuration: bits, group size, residual length, plans, presets. */
export class XqConfigError extends XqError {
  constructor(code: XqErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'XqConfigError';
  }
}

/** A tensor or array whose shape or length does not match what the operation needs. */
export class XqShapeError extends XqError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_SHAPE', message, options);
    this.name = 'XqShapeError';
  }
}

/** NaN or ±Infinity in an input that must be finite; the message says where. */
export class XqNumericError extends XqError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_NON_FINITE', message, options);
    this.name = 'XqNumericError';
  }
}

/** A corrupt, truncated or unsupported file. */
export class XqFormatError extends XqError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('E_FORMAT', message, options);
    this.name = 'XqFormatError';
  }
}

/** An operation called at the wrong time (e.g. attend before prefill) or past a declared capacity. */
export class XqStateError extends XqError {
  constructor(code: 'E_STATE' | 'E_CAPACITY', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'XqStateError';
  }
}

/** A backend or kernel that is not available here. */
export class XqBackendError extends XqError {
  constructor(code: 'E_BACKEND_UNAVAILABLE' | 'E_KERNEL_MISSING', message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'XqBackendError';
  }
}
