from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    FIXED: _ClassVar[Kind]
    PERCENT: _ClassVar[Kind]

class RedemptionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDEMPTION_STATE_UNSPECIFIED: _ClassVar[RedemptionState]
    REDEEMED: _ClassVar[RedemptionState]
    RELEASED: _ClassVar[RedemptionState]
KIND_UNSPECIFIED: Kind
FIXED: Kind
PERCENT: Kind
REDEMPTION_STATE_UNSPECIFIED: RedemptionState
REDEEMED: RedemptionState
RELEASED: RedemptionState

class Coupon(_message.Message):
    __slots__ = ("code", "kind", "value", "min_total_cents", "per_user_limit", "valid_from_ms", "valid_until_ms", "total_limit", "redeemed")
    CODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    PER_USER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_FIELD_NUMBER: _ClassVar[int]
    code: str
    kind: Kind
    value: int
    min_total_cents: int
    per_user_limit: int
    valid_from_ms: int
    valid_until_ms: int
    total_limit: int
    redeemed: int
    def __init__(self, code: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., value: _Optional[int] = ..., min_total_cents: _Optional[int] = ..., per_user_limit: _Optional[int] = ..., valid_from_ms: _Optional[int] = ..., valid_until_ms: _Optional[int] = ..., total_limit: _Optional[int] = ..., redeemed: _Optional[int] = ...) -> None: ...

class RedeemRequest(_message.Message):
    __slots__ = ("redemption_id", "code", "user_id", "order_total_cents")
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    redemption_id: str
    code: str
    user_id: str
    order_total_cents: int
    def __init__(self, redemption_id: _Optional[str] = ..., code: _Optional[str] = ..., user_id: _Optional[str] = ..., order_total_cents: _Optional[int] = ...) -> None: ...

class RedemptionRef(_message.Message):
    __slots__ = ("redemption_id",)
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    redemption_id: str
    def __init__(self, redemption_id: _Optional[str] = ...) -> None: ...

class Redemption(_message.Message):
    __slots__ = ("redemption_id", "state", "code", "discount_cents")
    REDEMPTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    redemption_id: str
    state: RedemptionState
    code: str
    discount_cents: int
    def __init__(self, redemption_id: _Optional[str] = ..., state: _Optional[_Union[RedemptionState, str]] = ..., code: _Optional[str] = ..., discount_cents: _Optional[int] = ...) -> None: ...

class GetCouponRequest(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    def __init__(self, code: _Optional[str] = ...) -> None: ...
