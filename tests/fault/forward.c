/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * p11fault: the wrappers that only translate the session handle and pass
 * the call on (counted, failures injected, delays added, gone sessions
 * refused like every other call; see call.h).
 */
#include "call.h"

#define FWD(name, params, args)                                               \
    static CK_RV fwd_##name params                                            \
    {                                                                         \
        call_t c;                                                             \
        CK_RV rv = call_begin(&c, FLT_FN_##name, CALL_SESSION, hSession);     \
                                                                              \
        if (rv == CKR_OK)                                                     \
            rv = call_delay(&c);                                              \
        if (rv == CKR_OK)                                                     \
            rv = flt.real->name args;                                         \
        return call_end(&c, rv);                                              \
    }

typedef CK_SESSION_HANDLE S;
typedef CK_BYTE_PTR B;
typedef CK_ULONG_PTR LP;
typedef CK_OBJECT_HANDLE O;
typedef CK_MECHANISM_PTR M;
typedef CK_ATTRIBUTE_PTR A;

FWD(C_InitPIN, (S hSession, CK_UTF8CHAR_PTR p, CK_ULONG l), (c.real, p, l))
FWD(C_SetPIN, (S hSession, CK_UTF8CHAR_PTR o, CK_ULONG ol, CK_UTF8CHAR_PTR n, CK_ULONG nl),
    (c.real, o, ol, n, nl))
FWD(C_GetSessionInfo, (S hSession, CK_SESSION_INFO_PTR i), (c.real, i))
FWD(C_GetOperationState, (S hSession, B s, LP l), (c.real, s, l))
FWD(C_SetOperationState, (S hSession, B s, CK_ULONG l, O e, O a), (c.real, s, l, e, a))
FWD(C_Logout, (S hSession), (c.real))
FWD(C_CreateObject, (S hSession, A t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o), (c.real, t, n, o))
FWD(C_CopyObject, (S hSession, O o, A t, CK_ULONG n, CK_OBJECT_HANDLE_PTR r),
    (c.real, o, t, n, r))
FWD(C_DestroyObject, (S hSession, O o), (c.real, o))
FWD(C_GetObjectSize, (S hSession, O o, LP l), (c.real, o, l))
FWD(C_SetAttributeValue, (S hSession, O o, A t, CK_ULONG n), (c.real, o, t, n))
FWD(C_FindObjectsInit, (S hSession, A t, CK_ULONG n), (c.real, t, n))
FWD(C_FindObjects, (S hSession, CK_OBJECT_HANDLE_PTR o, CK_ULONG m, LP n), (c.real, o, m, n))
FWD(C_FindObjectsFinal, (S hSession), (c.real))
FWD(C_EncryptInit, (S hSession, M m, O k), (c.real, m, k))
FWD(C_Encrypt, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_EncryptUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_EncryptFinal, (S hSession, B o, LP ol), (c.real, o, ol))
FWD(C_DecryptInit, (S hSession, M m, O k), (c.real, m, k))
FWD(C_Decrypt, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_DecryptUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_DecryptFinal, (S hSession, B o, LP ol), (c.real, o, ol))
FWD(C_DigestInit, (S hSession, M m), (c.real, m))
FWD(C_Digest, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_DigestUpdate, (S hSession, B d, CK_ULONG dl), (c.real, d, dl))
FWD(C_DigestKey, (S hSession, O k), (c.real, k))
FWD(C_DigestFinal, (S hSession, B o, LP ol), (c.real, o, ol))
FWD(C_SignRecoverInit, (S hSession, M m, O k), (c.real, m, k))
FWD(C_SignRecover, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_VerifyInit, (S hSession, M m, O k), (c.real, m, k))
FWD(C_Verify, (S hSession, B d, CK_ULONG dl, B s, CK_ULONG sl), (c.real, d, dl, s, sl))
FWD(C_VerifyUpdate, (S hSession, B d, CK_ULONG dl), (c.real, d, dl))
FWD(C_VerifyFinal, (S hSession, B s, CK_ULONG sl), (c.real, s, sl))
FWD(C_VerifyRecoverInit, (S hSession, M m, O k), (c.real, m, k))
FWD(C_VerifyRecover, (S hSession, B s, CK_ULONG sl, B o, LP ol), (c.real, s, sl, o, ol))
FWD(C_DigestEncryptUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_DecryptDigestUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_SignEncryptUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_DecryptVerifyUpdate, (S hSession, B d, CK_ULONG dl, B o, LP ol), (c.real, d, dl, o, ol))
FWD(C_GenerateKey, (S hSession, M m, A t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
    (c.real, m, t, n, k))
FWD(C_GenerateKeyPair,
    (S hSession, M m, A pt, CK_ULONG pn, A kt, CK_ULONG kn, CK_OBJECT_HANDLE_PTR pub,
     CK_OBJECT_HANDLE_PTR priv),
    (c.real, m, pt, pn, kt, kn, pub, priv))
FWD(C_WrapKey, (S hSession, M m, O w, O k, B o, LP ol), (c.real, m, w, k, o, ol))
FWD(C_UnwrapKey, (S hSession, M m, O u, B w, CK_ULONG wl, A t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
    (c.real, m, u, w, wl, t, n, k))
FWD(C_DeriveKey, (S hSession, M m, O b, A t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
    (c.real, m, b, t, n, k))
FWD(C_SeedRandom, (S hSession, B s, CK_ULONG l), (c.real, s, l))
FWD(C_GenerateRandom, (S hSession, B r, CK_ULONG l), (c.real, r, l))
FWD(C_GetFunctionStatus, (S hSession), (c.real))
FWD(C_CancelFunction, (S hSession), (c.real))

void flt_fill_forwarders(CK_FUNCTION_LIST *f)
{
#define SET(name) f->name = fwd_##name;
    SET(C_InitPIN) SET(C_SetPIN) SET(C_GetSessionInfo) SET(C_GetOperationState)
    SET(C_SetOperationState) SET(C_Logout) SET(C_CreateObject) SET(C_CopyObject)
    SET(C_DestroyObject) SET(C_GetObjectSize) SET(C_SetAttributeValue) SET(C_FindObjectsInit)
    SET(C_FindObjects) SET(C_FindObjectsFinal) SET(C_EncryptInit) SET(C_Encrypt)
    SET(C_EncryptUpdate) SET(C_EncryptFinal) SET(C_DecryptInit) SET(C_Decrypt)
    SET(C_DecryptUpdate) SET(C_DecryptFinal) SET(C_DigestInit) SET(C_Digest)
    SET(C_DigestUpdate) SET(C_DigestKey) SET(C_DigestFinal) SET(C_SignRecoverInit)
    SET(C_SignRecover) SET(C_VerifyInit) SET(C_Verify) SET(C_VerifyUpdate) SET(C_VerifyFinal)
    SET(C_VerifyRecoverInit) SET(C_VerifyRecover) SET(C_DigestEncryptUpdate)
    SET(C_DecryptDigestUpdate) SET(C_SignEncryptUpdate) SET(C_DecryptVerifyUpdate)
    SET(C_GenerateKey) SET(C_GenerateKeyPair) SET(C_WrapKey) SET(C_UnwrapKey)
    SET(C_DeriveKey) SET(C_SeedRandom) SET(C_GenerateRandom) SET(C_GetFunctionStatus)
    SET(C_CancelFunction)
#undef SET
}
