/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The exported symbols of p11agent-pkcs11.so (see p11agent-pkcs11.sym):
 * C_GetFunctionList (PKCS#11 2.40) and C_GetInterfaceList/C_GetInterface
 * for PKCS#11 3.0 callers, which get the same 2.40 function list as the
 * interface "PKCS 11" (3.0 lets a module offer an older version there).
 * Every function the module does not implement answers
 * CKR_FUNCTION_NOT_SUPPORTED: it signs, nothing else.
 */
#include <string.h>

#include "state.h"

/* PKCS#11 3.0 (p11-kit 0.24's pkcs11.h stops at 2.40) */
typedef struct mod_interface {
    CK_UTF8CHAR *pInterfaceName;
    void *pFunctionList;
    CK_FLAGS flags;
} mod_interface_t;
#define MOD_CKF_INTERFACE_FORK_SAFE 0x1UL

static CK_RV stub_C_InitToken(CK_SLOT_ID slot_id, unsigned char *pin, unsigned long pin_len, unsigned char *label)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_InitPIN(CK_SESSION_HANDLE session, unsigned char *pin, unsigned long pin_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SetPIN(CK_SESSION_HANDLE session, unsigned char *old_pin, unsigned long old_len, unsigned char *new_pin, unsigned long new_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_GetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state, unsigned long *operation_state_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state, unsigned long operation_state_len, CK_OBJECT_HANDLE encryption_key, CK_OBJECT_HANDLE authentiation_key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *object)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_CopyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *new_object)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DestroyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE *templ, unsigned long count)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_EncryptInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_Encrypt(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *encrypted_data, unsigned long *encrypted_data_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_EncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_EncryptFinal(CK_SESSION_HANDLE session, unsigned char *last_encrypted_part, unsigned long *last_encrypted_part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DecryptInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_Decrypt(CK_SESSION_HANDLE session, unsigned char *encrypted_data, unsigned long encrypted_data_len, unsigned char *data, unsigned long *data_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DecryptUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DecryptFinal(CK_SESSION_HANDLE session, unsigned char *last_part, unsigned long *last_part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DigestInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_Digest(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *digest, unsigned long *digest_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DigestUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DigestKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DigestFinal(CK_SESSION_HANDLE session, unsigned char *digest, unsigned long *digest_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SignRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SignRecover(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long *signature_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_VerifyInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_Verify(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long signature_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_VerifyUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_VerifyFinal(CK_SESSION_HANDLE session, unsigned char *signature, unsigned long signature_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_VerifyRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_VerifyRecover(CK_SESSION_HANDLE session, unsigned char *signature, unsigned long signature_len, unsigned char *data, unsigned long *data_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DigestEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DecryptDigestUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SignEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DecryptVerifyUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_ATTRIBUTE *public_key_template, unsigned long public_key_attribute_count, CK_ATTRIBUTE *private_key_template, unsigned long private_key_attribute_count, CK_OBJECT_HANDLE *public_key, CK_OBJECT_HANDLE *private_key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_WrapKey(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key, unsigned char *wrapped_key, unsigned long *wrapped_key_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE unwrapping_key, unsigned char *wrapped_key, unsigned long wrapped_key_len, CK_ATTRIBUTE *templ, unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_DeriveKey(CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE base_key, CK_ATTRIBUTE *templ, unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_SeedRandom(CK_SESSION_HANDLE session, unsigned char *seed, unsigned long seed_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_GenerateRandom(CK_SESSION_HANDLE session, unsigned char *random_data, unsigned long random_len)
{
    return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV stub_C_GetFunctionStatus(CK_SESSION_HANDLE session)
{
    return CKR_FUNCTION_NOT_PARALLEL;
}

static CK_RV stub_C_CancelFunction(CK_SESSION_HANDLE session)
{
    return CKR_FUNCTION_NOT_PARALLEL;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret);

static CK_FUNCTION_LIST functions = {
    .version = {2, 40},
    .C_Initialize = mod_C_Initialize,
    .C_Finalize = mod_C_Finalize,
    .C_GetInfo = mod_C_GetInfo,
    .C_GetFunctionList = C_GetFunctionList,
    .C_GetSlotList = mod_C_GetSlotList,
    .C_GetSlotInfo = mod_C_GetSlotInfo,
    .C_GetTokenInfo = mod_C_GetTokenInfo,
    .C_WaitForSlotEvent = mod_C_WaitForSlotEvent,
    .C_GetMechanismList = mod_C_GetMechanismList,
    .C_GetMechanismInfo = mod_C_GetMechanismInfo,
    .C_InitToken = stub_C_InitToken,
    .C_InitPIN = stub_C_InitPIN,
    .C_SetPIN = stub_C_SetPIN,
    .C_OpenSession = mod_C_OpenSession,
    .C_CloseSession = mod_C_CloseSession,
    .C_CloseAllSessions = mod_C_CloseAllSessions,
    .C_GetSessionInfo = mod_C_GetSessionInfo,
    .C_GetOperationState = stub_C_GetOperationState,
    .C_SetOperationState = stub_C_SetOperationState,
    .C_Login = mod_C_Login,
    .C_Logout = mod_C_Logout,
    .C_CreateObject = stub_C_CreateObject,
    .C_CopyObject = stub_C_CopyObject,
    .C_DestroyObject = stub_C_DestroyObject,
    .C_GetObjectSize = mod_C_GetObjectSize,
    .C_GetAttributeValue = mod_C_GetAttributeValue,
    .C_SetAttributeValue = stub_C_SetAttributeValue,
    .C_FindObjectsInit = mod_C_FindObjectsInit,
    .C_FindObjects = mod_C_FindObjects,
    .C_FindObjectsFinal = mod_C_FindObjectsFinal,
    .C_EncryptInit = stub_C_EncryptInit,
    .C_Encrypt = stub_C_Encrypt,
    .C_EncryptUpdate = stub_C_EncryptUpdate,
    .C_EncryptFinal = stub_C_EncryptFinal,
    .C_DecryptInit = stub_C_DecryptInit,
    .C_Decrypt = stub_C_Decrypt,
    .C_DecryptUpdate = stub_C_DecryptUpdate,
    .C_DecryptFinal = stub_C_DecryptFinal,
    .C_DigestInit = stub_C_DigestInit,
    .C_Digest = stub_C_Digest,
    .C_DigestUpdate = stub_C_DigestUpdate,
    .C_DigestKey = stub_C_DigestKey,
    .C_DigestFinal = stub_C_DigestFinal,
    .C_SignInit = mod_C_SignInit,
    .C_Sign = mod_C_Sign,
    .C_SignUpdate = mod_C_SignUpdate,
    .C_SignFinal = mod_C_SignFinal,
    .C_SignRecoverInit = stub_C_SignRecoverInit,
    .C_SignRecover = stub_C_SignRecover,
    .C_VerifyInit = stub_C_VerifyInit,
    .C_Verify = stub_C_Verify,
    .C_VerifyUpdate = stub_C_VerifyUpdate,
    .C_VerifyFinal = stub_C_VerifyFinal,
    .C_VerifyRecoverInit = stub_C_VerifyRecoverInit,
    .C_VerifyRecover = stub_C_VerifyRecover,
    .C_DigestEncryptUpdate = stub_C_DigestEncryptUpdate,
    .C_DecryptDigestUpdate = stub_C_DecryptDigestUpdate,
    .C_SignEncryptUpdate = stub_C_SignEncryptUpdate,
    .C_DecryptVerifyUpdate = stub_C_DecryptVerifyUpdate,
    .C_GenerateKey = stub_C_GenerateKey,
    .C_GenerateKeyPair = stub_C_GenerateKeyPair,
    .C_WrapKey = stub_C_WrapKey,
    .C_UnwrapKey = stub_C_UnwrapKey,
    .C_DeriveKey = stub_C_DeriveKey,
    .C_SeedRandom = stub_C_SeedRandom,
    .C_GenerateRandom = stub_C_GenerateRandom,
    .C_GetFunctionStatus = stub_C_GetFunctionStatus,
    .C_CancelFunction = stub_C_CancelFunction,
};

static mod_interface_t interface = {
    .pInterfaceName = (CK_UTF8CHAR *)"PKCS 11",
    .pFunctionList = &functions,
    /* a child works after a fork without C_Initialize (module.c) */
    .flags = MOD_CKF_INTERFACE_FORK_SAFE,
};

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret)
{
    if (ret == NULL)
        return CKR_ARGUMENTS_BAD;
    *ret = &functions;
    return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetInterfaceList(mod_interface_t *list,
                                                                CK_ULONG_PTR count)
{
    CK_RV rv = CKR_OK;

    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    if (list != NULL) {
        if (*count < 1)
            rv = CKR_BUFFER_TOO_SMALL;
        else
            list[0] = interface;
    }
    *count = 1;
    return rv;
}

__attribute__((visibility("default"))) CK_RV C_GetInterface(CK_UTF8CHAR_PTR name,
                                                            CK_VERSION_PTR version,
                                                            mod_interface_t **ret, CK_FLAGS flags)
{
    if (ret == NULL)
        return CKR_ARGUMENTS_BAD;
    if (name != NULL && strcmp((const char *)name, "PKCS 11") != 0)
        return CKR_ARGUMENTS_BAD;
    if (version != NULL && (version->major != 2 || version->minor != 40))
        return CKR_ARGUMENTS_BAD;
    if ((flags & interface.flags) != flags)
        return CKR_ARGUMENTS_BAD;
    *ret = &interface;
    return CKR_OK;
}
